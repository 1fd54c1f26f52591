//! Cluster tokens over the registry's NATS endpoints with real trainers: shown whole once,
//! listed by prefix, a bad or missing token refused at once, and a revoked one sending its
//! nodes away.

use std::time::{Duration, Instant};

use gantry_contracts::error::ErrorCode;
use gantry_contracts::registry::{
    ClusterToken, ClusterTokenList, CreateClusterToken, Empty, RevokeClusterToken,
};
use gantry_contracts::subjects::registry as ep;
use gantry_testing::{TestStack, READY};

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_created_token_is_shown_whole_once_and_listed_by_its_prefix() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let first = stack.create_token("Worker Token").await;
        assert_eq!(first.id, 1);
        assert_eq!(first.name, "Worker Token");
        assert!(first.active);
        assert_eq!(first.token.len(), 64);
        assert!(first.token.chars().all(|c| c.is_ascii_hexdigit()));
        let second = stack.create_token("Second").await;
        assert_eq!(second.id, 2);

        let list: ClusterTokenList = stack
            .registry_call(ep::TOKENS_LIST, &Empty {})
            .await
            .unwrap();
        assert_eq!(list.tokens.len(), 2);
        assert_eq!(list.tokens[0].id, 1);
        assert_eq!(list.tokens[0].token, format!("{}...", &first.token[..8]));
        assert_eq!(list.tokens[0].created_at, first.created_at);
        let raw: serde_json::Value = stack
            .registry_call(ep::TOKENS_LIST, &Empty {})
            .await
            .unwrap();
        let mut keys: Vec<&str> = raw["tokens"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["active", "created_at", "id", "name", "token"]);
        assert!(raw["tokens"][0]["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
    })
    .await;
}

#[tokio::test]
async fn a_blank_token_name_is_a_bad_request_and_an_unknown_id_is_not_found() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let e = stack
            .registry_call::<_, ClusterToken>(
                ep::TOKENS_CREATE,
                &CreateClusterToken { name: "  ".into() },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("name"), "{e}");
        let e = stack
            .registry_call::<_, ClusterToken>(ep::TOKENS_REVOKE, &RevokeClusterToken { id: 42 })
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = stack
            .registry_call::<_, ClusterToken>(ep::TOKENS_CREATE, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    })
    .await;
}

#[tokio::test]
async fn a_bad_token_makes_the_trainer_exit_non_zero_quickly_with_a_clear_message() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let bogus = "0".repeat(64);
        let mut trainer = stack.trainer("node-x", &bogus, 1, &[]);
        let started = Instant::now();
        let status = trainer
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "the trainer kept running with a bad token:\n{}",
                    trainer.output()
                )
            });
        assert!(!status.success());
        assert!(started.elapsed() < Duration::from_secs(15));
        let out = trainer.output();
        assert!(out.contains("unknown or revoked cluster token"), "{out}");
        assert!(!out.contains(&bogus), "the token was echoed:\n{out}");
    })
    .await;
}

#[tokio::test]
async fn a_trainer_without_a_token_exits_non_zero_naming_the_variable() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let mut trainer = stack.spawn("gantry-trainer", &[("GANTRY_NODE_NAME", "node-y")]);
        let status = trainer
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("the trainer should exit");
        assert!(!status.success());
        assert!(
            trainer.output().contains("GANTRY_CLUSTER_TOKEN"),
            "{}",
            trainer.output()
        );
    })
    .await;
}

#[tokio::test]
async fn revoking_a_token_makes_its_trainer_exit_non_zero_and_shows_it_disconnected() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let doomed = stack.create_token("doomed").await;
        let kept = stack.create_token("kept").await;
        let mut trainer = stack.trainer("node-r", &doomed.token, 1, &[]);
        let other = stack.trainer("node-k", &kept.token, 1, &[]);
        trainer.wait_ready(READY).await;
        other.wait_ready(READY).await;
        stack
            .wait_node("node-r", Duration::from_secs(30), "connected", |n| {
                n.connected
            })
            .await;

        let revoked: ClusterToken = stack
            .registry_call(ep::TOKENS_REVOKE, &RevokeClusterToken { id: doomed.id })
            .await
            .unwrap();
        assert!(!revoked.active);
        assert_eq!(revoked.token, format!("{}...", &doomed.token[..8]));

        let status = trainer
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "the trainer kept running after its token was revoked:\n{}",
                    trainer.output()
                )
            });
        assert!(!status.success());
        assert!(trainer.output().contains("revoked"), "{}", trainer.output());
        let node = stack
            .wait_node("node-r", Duration::from_secs(5), "disconnected", |n| {
                !n.connected
            })
            .await;
        assert_eq!(node.token_name, "doomed");
        stack
            .wait_node("node-k", Duration::from_secs(5), "still connected", |n| {
                n.connected
            })
            .await;

        let list: ClusterTokenList = stack
            .registry_call(ep::TOKENS_LIST, &Empty {})
            .await
            .unwrap();
        assert!(
            !list
                .tokens
                .iter()
                .find(|t| t.id == doomed.id)
                .unwrap()
                .active
        );
        // Revoking again is not found: there is no active token with that id.
        let again = stack
            .registry_call::<_, ClusterToken>(
                ep::TOKENS_REVOKE,
                &RevokeClusterToken { id: doomed.id },
            )
            .await
            .unwrap_err();
        assert_eq!(again.code, ErrorCode::NotFound, "{again}");
        assert!(again.message.contains("already revoked"), "{again}");

        // Coming back with it is refused at once.
        let mut retry = stack.trainer("node-r", &doomed.token, 1, &[]);
        let status = retry
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("refused trainer exits");
        assert!(!status.success());
        assert!(retry.output().contains("revoked"), "{}", retry.output());
    })
    .await;
}
