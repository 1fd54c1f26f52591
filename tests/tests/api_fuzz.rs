//! The API fuzzed from its own OpenAPI document (schemathesis, from PyPI), with a bounded
//! budget: no answer is a 5xx, and every answer fits the schema the document gives it.

use std::time::Duration;

use gantry_testing::{TestStack, ADMIN_TOKEN};

const LIMIT: Duration = Duration::from_secs(420);

#[tokio::test]
async fn the_api_fuzzed_from_its_own_spec_answers_no_5xx_and_keeps_to_its_schemas() {
    TestStack::run(LIMIT, |mut stack| async move {
        // Held submissions answer within a second; the fuzzer must not wait on them.
        stack.set_env("GANTRY_TRAIN_HOLD", "1");
        stack.start_core().await;
        stack.shapes("shapes", 3, 1);
        let spec = stack.url("/admin/api/openapi.json");
        // Its cache of findings goes to a scratch directory, not the checkout.
        let scratch = tempfile::TempDir::new().unwrap();
        let out = tokio::process::Command::new(gantry_testing::tool("schemathesis"))
            .args(["run", &spec, "--url", stack.base_url()])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args([
                "--max-examples",
                "15",
                "--seed",
                "7",
                "--request-timeout",
                "30",
            ])
            .env("NO_COLOR", "1")
            .current_dir(scratch.path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run schemathesis");
        let report = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "schemathesis found failures:\n{report}"
        );
        assert!(report.contains("passed"), "{report}");
    })
    .await;
}
