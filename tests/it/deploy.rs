//! The files under `deploy/` for running it off AWS: the Kubernetes manifests pass the
//! Kubernetes API's schema (`kubernetes-validate --strict`, from PyPI: the schemas ship in the
//! package, no cluster needed) and agree with the tool (the CronJob's deadline against the
//! run's budget, the probes and scrape port against `--listen`); the systemd units pass
//! `systemd-analyze verify`; the Task Scheduler XML is well-formed and says what the docs say.
//! A test whose tool is missing says so and passes.

use std::process::Command;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> String {
    format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap()
}

/// `tool args`, or None (said on stderr) when the tool is not installed.
fn run_tool(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool).args(args).output() {
        Ok(output) => Some(output),
        Err(e) => {
            eprintln!("skipped: {tool} cannot run ({e})");
            None
        }
    }
}

fn manifests() -> Vec<Yaml> {
    ["secret.yaml", "cronjob.yaml", "follow.yaml"]
        .iter()
        .flat_map(|f| YamlLoader::load_from_str(&read(&format!("kubernetes/{f}"))).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schema() {
    let files: Vec<String> = [
        "secret.yaml",
        "cronjob.yaml",
        "follow.yaml",
        "tenants-job.yaml",
    ]
    .iter()
    .map(|f| deploy(&format!("kubernetes/{f}")))
    .collect();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let Some(out) = run_tool("kubernetes-validate", &args) else {
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 5, "{text}");
}

/// Many shops (docs/tenants.md): a CronJob of Indexed Jobs, one index per tenant, at most
/// `parallelism` at once; a failed index fails alone; every wave of tenants fits the deadline,
/// and the deadline the interval.
#[test]
fn the_tenant_job_runs_one_index_per_tenant_within_its_deadline() {
    let docs = YamlLoader::load_from_str(&read("kubernetes/tenants-job.yaml")).unwrap();
    let cron = &kind(&docs, "CronJob")["spec"];
    assert_eq!(cron["concurrencyPolicy"].as_str(), Some("Forbid"));
    assert_eq!(cron["schedule"].as_str(), Some("*/5 * * * *"));
    let job = &cron["jobTemplate"]["spec"];
    assert_eq!(job["completionMode"].as_str(), Some("Indexed"));
    let completions = job["completions"].as_i64().unwrap();
    let parallelism = job["parallelism"].as_i64().unwrap();
    assert!(
        (1..=completions).contains(&parallelism),
        "parallelism {parallelism}"
    );
    // One tenant's failure is its index's alone: the others run on.
    assert_eq!(job["backoffLimitPerIndex"].as_i64(), Some(0));
    assert_eq!(
        job["template"]["spec"]["restartPolicy"].as_str(),
        Some("Never")
    );
    let container = &job["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["run", "--tenant-index", "$(JOB_COMPLETION_INDEX)"]);
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_unreserver"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--tenant-index <TENANT_INDEX>"));
    // Kubernetes expands $(VAR) in args from the variables declared before: the index is.
    let env = container["env"].as_vec().unwrap();
    assert_eq!(env[0]["name"].as_str(), Some("JOB_COMPLETION_INDEX"));
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
    );
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert!(value("TENANTS").is_some() || value("TENANTS_QUERY").is_some());
    assert_eq!(value("RUN_INTERVAL_SECONDS").as_deref(), Some("300"));
    // Each wave: the budget, the events' 5 s of grace, 20 s to start a pod and connect.
    let budget: i64 = value("TIME_BUDGET_SECONDS").unwrap().parse().unwrap();
    let waves = (completions + parallelism - 1) / parallelism;
    let deadline = job["activeDeadlineSeconds"].as_i64().unwrap();
    assert!(
        waves * (budget + 5 + 20) <= deadline && deadline < 300,
        "{waves} waves of {budget} s in {deadline} s"
    );
}

#[test]
fn the_cronjob_and_the_follower_agree_with_the_tool() {
    let docs = manifests();
    let job = &kind(&docs, "CronJob")["spec"];
    assert_eq!(job["concurrencyPolicy"].as_str(), Some("Forbid"));
    assert_eq!(job["schedule"].as_str(), Some("*/5 * * * *"));
    let deadline = job["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .unwrap();
    let container = &job["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| {
        container["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    let budget: i64 = env("TIME_BUDGET_SECONDS").unwrap().parse().unwrap();
    let default = unreserver::ReleaseSettings::from_lookup(&|_: &str| None)
        .unwrap()
        .time_budget;
    assert_eq!(default, Some(Duration::from_secs(budget as u64)));
    // Past the budget and the events' grace; before the next run is due.
    assert!(deadline > budget + 5 && deadline < 300, "{deadline}");
    assert_eq!(env("RUN_INTERVAL_SECONDS").as_deref(), Some("300"));

    let deployment = &kind(&docs, "Deployment")["spec"]["template"];
    let pod = &deployment["spec"];
    let follower = &pod["containers"][0];
    let args: Vec<&str> = follower["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["follow", "--listen", "0.0.0.0:9187"]);
    assert_eq!(
        deployment["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some("9187")
    );
    assert_eq!(follower["ports"][0]["containerPort"].as_i64(), Some(9187));
    assert_eq!(
        follower["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        follower["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(follower["resources"]["limits"]["memory"].as_str().is_some());
    let pdb = &kind(&docs, "PodDisruptionBudget")["spec"];
    assert_eq!(pdb["minAvailable"].as_i64(), Some(1));
    assert!(kind(&docs, "Deployment")["spec"]["replicas"].as_i64() > Some(1));
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(format!("unreserver-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for unit in [
        "unreserver-follow.service",
        "unreserver-run.service",
        "unreserver-run.timer",
    ] {
        // The binary the tests built stands where the unit expects it (verify checks it is
        // executable).
        let text = read(&format!("systemd/{unit}")).replace(
            "/usr/local/bin/unreserver",
            env!("CARGO_BIN_EXE_unreserver"),
        );
        let path = dir.join(unit);
        std::fs::write(&path, text).unwrap();
        paths.push(path.display().to_string());
    }
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let out = run_tool("systemd-analyze", &args);
    let _ = std::fs::remove_dir_all(&dir);
    let Some(out) = out else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // A directive it cannot parse is only a warning: none may be there.
    assert!(stderr.trim().is_empty(), "{stderr}");
    let follow = read("systemd/unreserver-follow.service");
    assert!(follow.contains("ExecStart=/usr/local/bin/unreserver follow --listen 127.0.0.1:9187"));
}

#[test]
fn the_task_scheduler_xml_is_well_formed_and_never_runs_two_at_once() {
    let xml = read("windows/unreserver-run.xml");
    let check = "import sys, xml.etree.ElementTree as e; e.parse(sys.argv[1])";
    let path = deploy("windows/unreserver-run.xml");
    if let Some(out) = run_tool("python3", &["-c", check, &path]) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(xml.contains("<MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>"));
    assert!(xml.contains("<Interval>PT5M</Interval>"));
    assert!(xml.contains("<ExecutionTimeLimit>PT5M</ExecutionTimeLimit>"));
    assert!(read("windows/schtasks.cmd").contains("/XML unreserver-run.xml"));
}
