#[tokio::main]
async fn main() -> std::process::ExitCode {
    gantry_runtime::run_service("gantry-trainer", gantry_trainer::startup::run).await
}
