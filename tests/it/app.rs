//! The front doors as a test reaches them (zero2prod's `spawn_app` is the model): a
//! [`TestApp`] is a database of the test's own ([`TestDb`], which it dereferences to) and a
//! [`Front`], the environment both front-ends read, set here and nowhere else —
//! `DATABASE_URL` the least-privilege release role's, nothing from the shell that runs the
//! tests. [`Front::cli`] runs the `unreserver` binary in that environment (stdout parsed when
//! it is JSON, the exit code, stderr); [`Front::lambda`] invokes the Lambda handler in-process
//! (`unreserver::handle` on the `AppState` its environment builds once, as one execution
//! environment does), answering the response or the error as Lambda reports it. A test that
//! needs another variable, another database URL or none at all derives a `Front` with it
//! (`t.with("BATCH_SIZE", "3")`, [`Front::with_aws`] for the AWS stand-in); one that needs
//! the process itself, to signal it, starts it with [`Front::start_cli`].

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Context, Diagnostic, LambdaEvent};
use serde_json::Value;
use tokio::sync::OnceCell;
use unreserver::{handle, AppState, Config};

use crate::common::{test_env, TestDb};

/// What an invocation without a deadline of its own is given: a real one always has one, and
/// a minute is more than any test here needs.
const LAMBDA_DEADLINE_MS: u64 = 60_000;

/// The variables of the test process the binary keeps: where its tools are, and nothing the
/// tool reads as a setting.
const KEPT_FROM_THE_SHELL: &[&str] = &["PATH", "HOME", "RUST_BACKTRACE"];

/// A database of the test's own, and the front doors set up on it.
pub struct TestApp {
    pub db: TestDb,
    front: Front,
}

impl TestApp {
    /// A fresh database (cloned from the template), and the front doors on it as the
    /// least-privilege release role.
    pub async fn spawn() -> TestApp {
        TestApp::on(TestDb::new().await)
    }

    /// The front doors on `db`, as the least-privilege release role.
    pub fn on(db: TestDb) -> TestApp {
        let front = Front::new().with("DATABASE_URL", db.release_url());
        TestApp { db, front }
    }

    /// The front doors' environment.
    pub fn front(&self) -> &Front {
        &self.front
    }

    /// The front doors with `name` set to `value` besides (a new environment).
    pub fn with(&self, name: &str, value: impl Into<String>) -> Front {
        self.front.with(name, value)
    }

    /// The front doors with the AWS stand-in's endpoint and credentials besides.
    pub fn with_aws(&self) -> Front {
        self.front.with_aws()
    }

    /// `unreserver ARGS` run to its end.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.front.cli(args).await
    }

    /// The Lambda handler's answer to `payload`, with a minute to its deadline.
    pub async fn lambda(&self, payload: Value) -> Result<Value, LambdaError> {
        self.front.lambda(payload).await
    }

    /// The Lambda handler's answer to `payload`, its deadline `deadline_in_ms` from now.
    pub async fn lambda_within(
        &self,
        payload: Value,
        deadline_in_ms: u64,
    ) -> Result<Value, LambdaError> {
        self.front.lambda_within(payload, deadline_in_ms).await
    }
}

impl std::ops::Deref for TestApp {
    type Target = TestDb;

    fn deref(&self) -> &TestDb {
        &self.db
    }
}

/// The environment of the front doors (the binary's variables; the Lambda's configuration),
/// and the Lambda execution environment built from it once, shared by its clones.
#[derive(Clone, Default)]
pub struct Front {
    vars: Arc<BTreeMap<String, String>>,
    lambda: Arc<OnceCell<AppState>>,
}

impl Front {
    /// No variable set: no database, every setting its default.
    pub fn new() -> Front {
        Front::default()
    }

    /// This environment with `name` set to `value` (a new one: the Lambda's state is built
    /// again from it).
    pub fn with(&self, name: &str, value: impl Into<String>) -> Front {
        let mut vars = (*self.vars).clone();
        vars.insert(name.to_string(), value.into());
        Front {
            vars: Arc::new(vars),
            lambda: Arc::default(),
        }
    }

    /// This environment without `name` (a new one).
    pub fn without(&self, name: &str) -> Front {
        let mut vars = (*self.vars).clone();
        vars.remove(name);
        Front {
            vars: Arc::new(vars),
            lambda: Arc::default(),
        }
    }

    /// This environment with the AWS stand-in `scripts/test.sh` starts (moto): its endpoint,
    /// a region and its test credentials. (The binary reads them; the in-process Lambda's AWS
    /// clients read the test process's own environment.)
    pub fn with_aws(&self) -> Front {
        self.with("AWS_ENDPOINT_URL", test_env("UNRESERVER_TEST_AWS_ENDPOINT"))
            .with("AWS_REGION", "us-east-1")
            .with("AWS_ACCESS_KEY_ID", "test")
            .with("AWS_SECRET_ACCESS_KEY", "test")
    }

    /// The value of `name` in this environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The binary with `args`, in this environment and no other.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_unreserver"));
        cmd.args(args).env_clear();
        for name in KEPT_FROM_THE_SHELL {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.envs(self.vars.iter());
        cmd
    }

    /// `unreserver ARGS` run to its end (on a blocking thread: the test's own tasks go on).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = self.command(args);
        let args = args.iter().map(|a| a.to_string()).collect();
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("cannot start unreserver");
        CliOutput::new(args, output)
    }

    /// `unreserver ARGS` started, its stdout and stderr kept for [`RunningCli::wait`].
    pub fn start_cli(&self, args: &[&str]) -> RunningCli {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start unreserver");
        RunningCli {
            args: args.iter().map(|a| a.to_string()).collect(),
            child,
        }
    }

    /// The state the Lambda's init builds from this environment (built once): its error when
    /// the init fails.
    pub async fn lambda_init(&self) -> Result<&AppState, unreserver::Error> {
        self.lambda
            .get_or_try_init(|| async {
                let config = Config::from_lookup(|name| self.vars.get(name).cloned())?;
                AppState::from_config(config).await
            })
            .await
    }

    /// The Lambda handler's answer to `payload`, with a minute to its deadline.
    pub async fn lambda(&self, payload: Value) -> Result<Value, LambdaError> {
        self.lambda_within(payload, LAMBDA_DEADLINE_MS).await
    }

    /// The Lambda handler's answer to `payload`, its deadline `deadline_in_ms` from now (0:
    /// none). A failed init fails the test.
    pub async fn lambda_within(
        &self,
        payload: Value,
        deadline_in_ms: u64,
    ) -> Result<Value, LambdaError> {
        let state = self
            .lambda_init()
            .await
            .unwrap_or_else(|e| panic!("the Lambda's init failed: {}", e.chain()));
        let mut context = Context::default();
        context.request_id = "req-test-app".into();
        if deadline_in_ms > 0 {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            context.deadline = now.as_millis() as u64 + deadline_in_ms;
        }
        handle(state, LambdaEvent::new(payload, context))
            .await
            .map_err(|error| LambdaError {
                retryable: error.0.is_retryable(),
                diagnostic: Diagnostic::from(error),
            })
    }
}

/// A failed invocation as Lambda reports it, and whether the error says a retry helps.
#[derive(Debug)]
pub struct LambdaError {
    pub diagnostic: Diagnostic,
    pub retryable: bool,
}

impl LambdaError {
    /// Lambda's `errorType`: the error's kind.
    pub fn error_type(&self) -> &str {
        &self.diagnostic.error_type
    }
}

/// What a command did: its exit code (None when a signal ended it), stdout and stderr.
#[derive(Debug)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Stdout as one JSON value, when it is one.
    parsed: Option<Value>,
}

impl CliOutput {
    fn new(args: Vec<String>, output: std::process::Output) -> CliOutput {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        CliOutput {
            args,
            code: output.status.code(),
            parsed: serde_json::from_str(stdout.trim()).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout as one JSON value; the test fails, showing both streams, when it is not.
    pub fn json(&self) -> &Value {
        self.parsed.as_ref().unwrap_or_else(|| {
            panic!(
                "{:?}: stdout is not one JSON value: {}\nstderr: {}",
                self.args, self.stdout, self.stderr
            )
        })
    }

    /// Stdout as one JSON value a line (`events`).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{:?}: not JSON ({e}): {line}", self.args))
            })
            .collect()
    }
}

/// A command started by [`Front::start_cli`].
pub struct RunningCli {
    args: Vec<String>,
    child: Child,
}

impl RunningCli {
    /// Sends it SIGTERM (as a scheduler stopping it does).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits for it to end (on a blocking thread).
    pub async fn wait(self) -> CliOutput {
        let RunningCli { args, child } = self;
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .expect("cannot wait for unreserver");
        CliOutput::new(args, output)
    }
}

/// Waits (up to 5 s, looking every 2 ms) until a session of the front doors (by the
/// `application_name` every one sets) started on database `name` after `since` (a time on the
/// server's clock, e.g. its `now()` read before the invocation) and satisfies `condition` (SQL
/// on `pg_stat_activity`'s columns): its pid.
pub async fn front_door_session(
    watcher: &tokio_postgres::Client,
    name: &str,
    since: SystemTime,
    condition: &str,
) -> Option<i32> {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
           AND backend_start > $3 AND ({condition}) ORDER BY backend_start DESC LIMIT 1"
    );
    for _ in 0..2500 {
        let rows = watcher
            .query(&sql, &[&name, &unreserver::APPLICATION_NAME, &since])
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return Some(row.get(0));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}
