#[tokio::main]
async fn main() -> std::process::ExitCode {
    gantry_runtime::run_service("gantry-auth", gantry_auth::startup::run).await
}
