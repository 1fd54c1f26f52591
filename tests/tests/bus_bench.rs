//! What admitting a node through the registry's auth callout costs at connect time, beside a
//! role's nkey connect to the same server in the same run (both over TLS). A benchmark, not a
//! test: it prints figures and is run on purpose:
//!
//! `cargo test -p gantry-e2e --test bus_bench -- --ignored --nocapture`

use std::time::{Duration, Instant};

use gantry_bus::permissions::node_inbox;
use gantry_bus::Role;
use gantry_testing::TestStack;

const ROUNDS: usize = 40;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn node_admission_through_the_callout_against_an_nkey_connect() {
    TestStack::run(Duration::from_secs(300), |mut stack| async move {
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("bench").await;
        let url = stack.nats.url();
        let seed = std::fs::read_to_string(stack.nats.layout().role_seed(Role::Api)).unwrap();

        let (mut callout, mut nkey) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            // Alternated, so drift on a shared machine falls on both alike.
            let t = Instant::now();
            let c = stack
                .nats
                .options()
                .name(format!("bench-{i}"))
                .token(token.token.clone())
                .custom_inbox_prefix(node_inbox(&token.token, &format!("bench-{i}")))
                .connect(&url)
                .await
                .expect("a node connects");
            c.flush().await.unwrap();
            callout.push(t.elapsed());
            drop(c);

            let t = Instant::now();
            let c = stack
                .nats
                .options()
                .nkey(seed.trim().to_owned())
                .connect(&url)
                .await
                .expect("the api's key connects");
            c.flush().await.unwrap();
            nkey.push(t.elapsed());
            drop(c);
        }
        let (a, b) = (median(callout), median(nkey));
        println!("connects over TLS, {ROUNDS} each, median:");
        println!("  node by cluster token (auth callout): {a:?}");
        println!("  role by nkey (no callout):            {b:?}");
        println!(
            "  ratio callout / nkey:                 {:.2}",
            a.as_secs_f64() / b.as_secs_f64()
        );
    })
    .await;
}
