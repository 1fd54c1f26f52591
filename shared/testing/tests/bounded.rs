//! [`TestStack::run`] itself: a test past its limit fails (never hangs) and names the limit, and a
//! test's own panic still fails it with its own message.

use std::time::Duration;

use gantry_testing::TestStack;

#[tokio::test]
#[should_panic(expected = "did not finish within 20s")]
async fn a_test_past_its_limit_fails_instead_of_hanging() {
    TestStack::run(Duration::from_secs(20), |_stack| async move {
        std::future::pending::<()>().await;
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "the test's own words")]
async fn a_panicking_test_fails_with_its_own_message() {
    TestStack::run(Duration::from_secs(60), |_stack| async move {
        panic!("the test's own words");
    })
    .await;
}
