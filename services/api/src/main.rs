#[tokio::main]
async fn main() -> std::process::ExitCode {
    gantry_runtime::run_service("gantry-api", gantry_api::startup::run).await
}
