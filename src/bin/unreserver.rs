//! The `unreserver` command line: see `unreserver --help` and `src/cli.rs`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    unreserver::cli::main().await
}
