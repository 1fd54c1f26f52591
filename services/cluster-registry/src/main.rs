#[tokio::main]
async fn main() -> std::process::ExitCode {
    gantry_runtime::run_service("gantry-registry", gantry_registry::startup::run).await
}
