//! The bus holds the line, as an attacker with a NATS connection would try it: with the server
//! configured as a deployment is (TLS, a key per role, nodes admitted by their cluster token
//! through the registry's auth callout).

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use chrono::Utc;
use futures::StreamExt;
use gantry_bus::permissions::node_inbox;
use gantry_bus::Role;
use gantry_contracts::jobs::{
    self, FailureKind, JobDriver, JobEvent, JobEventKind, JobRecord, JobRef, JobStatus,
    ModelVersion, TrainJob,
};
use gantry_contracts::registry::{ClusterToken, RegisterNode, Registered, RevokeClusterToken};
use gantry_contracts::subjects::{self, registry as ep};
use gantry_testing::jobs::train_job;
use gantry_testing::{wait_until, TestStack};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(240);

/// A connection that reports its events (server errors such as permission violations,
/// disconnects) on the returned channel.
async fn watched(
    options: ConnectOptions,
    url: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), async_nats::ConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = options
        .event_callback(move |event: Event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(url)
        .await?;
    Ok((client, rx))
}

/// Options of a node `hostname` joining with `token`, as a trainer connects.
fn node_options(stack: &TestStack, hostname: &str, token: &str) -> ConnectOptions {
    stack
        .nats
        .options()
        .name(hostname)
        .token(token.to_owned())
        .custom_inbox_prefix(node_inbox(token, hostname))
}

/// Wait until an event containing `needle` arrives; the events seen, for a failure message.
async fn expect_event(rx: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = rx.recv().await {
            let hit = e.contains(needle);
            seen.push(e);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "no event containing {needle:?}; saw {seen:?}");
    seen
}

/// Register as `hostname` over `client` (a node's own connection): its node id.
async fn register(client: &Client, token: &str, hostname: &str) -> String {
    let req = RegisterNode {
        token: token.into(),
        hostname: hostname.into(),
        ip_address: "10.0.0.5".into(),
        weight: 100,
        workers: 1,
        analysis_workers: 0,
        inventory: Default::default(),
        version: "0".into(),
    };
    let reply = client
        .request(
            subjects::registry(ep::REGISTER),
            serde_json::to_vec(&req).unwrap().into(),
        )
        .await
        .expect("the registry answers a node's registration");
    let registered: Registered = serde_json::from_slice(&reply.payload).unwrap();
    registered.node_id
}

#[tokio::test]
async fn only_an_active_cluster_token_connects_a_node_and_revoking_it_disconnects_the_node() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let token: ClusterToken = stack.create_token("sec").await;
        let url = stack.nats.url();

        // Anonymous, without TLS, with a made-up token, and with a token but no node name.
        assert!(
            stack.nats.options().connect(&url).await.is_err(),
            "anonymous"
        );
        assert!(async_nats::connect(&url).await.is_err(), "plain TCP");
        let bogus = "f".repeat(64);
        assert!(
            node_options(&stack, "gpu-x", &bogus)
                .connect(&url)
                .await
                .is_err(),
            "a made-up token"
        );
        assert!(
            stack
                .nats
                .options()
                .token(token.token.clone())
                .connect(&url)
                .await
                .is_err(),
            "a token without the node's name"
        );

        // The right token connects, and the registry knows it as that node.
        let (node, mut events) = watched(node_options(&stack, "gpu-ok", &token.token), &url)
            .await
            .expect("a node with an active token connects");
        let node_id = register(&node, &token.token, "gpu-ok").await;
        assert_eq!(node_id.len(), 32);

        // Revoked: the connected node is disconnected within seconds and cannot come back.
        let _: ClusterToken = stack
            .registry_call(ep::TOKENS_REVOKE, &RevokeClusterToken { id: token.id })
            .await
            .unwrap();
        expect_event(&mut events, "disconnected").await;
        let back = wait_until(Duration::from_secs(5), || async {
            (node.connection_state() == async_nats::connection::State::Connected).then_some(())
        })
        .await;
        assert!(back.is_none(), "a revoked node reconnected");
        assert!(
            node_options(&stack, "gpu-ok", &token.token)
                .connect(&url)
                .await
                .is_err(),
            "a revoked token connects"
        );
        let log = stack.registry().output();
        assert!(
            log.contains("disconnected the nodes of a revoked token"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_node_publishes_and_reads_only_its_own_subjects() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let token = stack.create_token("sec").await;
        let url = stack.nats.url();
        let (node, mut events) = watched(node_options(&stack, "gpu-a", &token.token), &url)
            .await
            .unwrap();
        // The inspector sees everything that gets through.
        let mut all = stack.client().subscribe(">").await.unwrap();
        stack.client().flush().await.unwrap();

        let forbidden = [
            subjects::node_heartbeat("someone-else"),
            subjects::node_control("someone-else"),
            jobs::cancel_subject("job-x"),
            jobs::event_subject("someone-else", "job-x"),
            subjects::auth(subjects::auth::TOKENS_CREATE),
            subjects::auth(subjects::auth::USERS_UPDATE),
            subjects::auth(subjects::auth::CREDITS_REFUND),
            subjects::registry(ep::TOKENS_REVOKE),
            jobs::train_subject(JobDriver::Cpu),
            "$JS.API.STREAM.DELETE.GANTRY_JOBS".to_owned(),
            "$JS.API.STREAM.PURGE.GANTRY_EVENTS".to_owned(),
        ];
        for subject in &forbidden {
            node.publish(subject.clone(), "{}".into()).await.unwrap();
        }
        // Its own heartbeat subject goes through, after all of those (sent until the inspector
        // sees it: everything the node published before it would have arrived first).
        let node_id = register(&node, &token.token, "gpu-a").await;
        let marker = subjects::node_heartbeat(&node_id);
        let mut through = Vec::new();
        let mut marked = false;
        'marked: for _ in 0..20 {
            node.publish(marker.clone(), "{}".into()).await.unwrap();
            node.flush().await.unwrap();
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(500), all.next()).await
            {
                if msg.subject.as_str() == marker {
                    marked = true;
                    break 'marked;
                }
                through.push(msg.subject.to_string());
            }
        }
        assert!(marked, "the node's own heartbeat never went through");
        for subject in &forbidden {
            assert!(!through.contains(subject), "{subject} got through");
        }
        expect_event(&mut events, "Permissions Violation for Publish").await;

        // Reading auth's or the registry's requests, or another node's control, is refused.
        for subject in [
            "gantry.auth.v1.>",
            "gantry.auth.v1.login",
            "gantry.registry.v1.nodes.register",
            "gantry.node.*.heartbeat",
            "_INBOX_api.>",
        ] {
            let (spy, mut spy_events) = watched(node_options(&stack, "gpu-a", &token.token), &url)
                .await
                .unwrap();
            let _sub = spy.subscribe(subject.to_owned()).await.unwrap();
            expect_event(&mut spy_events, "Permissions Violation for Subscription").await;
        }
        // Its own subjects it may use.
        drop(all);
        let mut control = node
            .subscribe(subjects::node_control(&node_id))
            .await
            .unwrap();
        node.flush().await.unwrap();
        // Sent again until it arrives (a message can pass a subscription still settling).
        let mut got = None;
        for _ in 0..20 {
            stack
                .client()
                .publish(subjects::node_control(&node_id), "{}".into())
                .await
                .unwrap();
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(500), control.next()).await
            {
                got = Some(m);
                break;
            }
        }
        assert!(got.is_some(), "a node reads its own control subject");
    })
    .await;
}

#[tokio::test]
async fn the_api_credentials_cannot_answer_auth_or_registry_requests() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let url = stack.nats.url();
        let seed = std::fs::read_to_string(stack.nats.layout().role_seed(Role::Api)).unwrap();
        for subject in [
            "gantry.auth.v1.verify",
            "gantry.auth.v1.login",
            "gantry.registry.v1.nodes.list",
        ] {
            let (api, mut events) =
                watched(stack.nats.options().nkey(seed.trim().to_owned()), &url)
                    .await
                    .expect("the api's key connects");
            let _sub = api
                .queue_subscribe(subject.to_owned(), "q".into())
                .await
                .unwrap();
            expect_event(&mut events, "Permissions Violation for Subscription").await;
        }
        // The services themselves still answer.
        stack.create_token("still-works").await;

        // An operator's monitoring key reaches $SRV and nothing else.
        let seed = std::fs::read_to_string(stack.nats.layout().role_seed(Role::Monitor)).unwrap();
        let (monitor, mut events) = watched(
            stack
                .nats
                .options()
                .nkey(seed.trim().to_owned())
                .custom_inbox_prefix(gantry_bus::permissions::inbox_prefix(Role::Monitor)),
            &url,
        )
        .await
        .expect("the monitoring key connects");
        let info = monitor
            .request("$SRV.INFO.gantry-auth", "".into())
            .await
            .expect("$SRV.INFO answers the monitoring key");
        let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
        assert_eq!(info["name"], "gantry-auth");
        monitor
            .publish(subjects::auth(subjects::auth::USERS_LIST), "{}".into())
            .await
            .unwrap();
        expect_event(&mut events, "Permissions Violation for Publish").await;
    })
    .await;
}

fn event(job_id: &str, delivery: u64, kind: JobEventKind) -> JobEvent {
    JobEvent {
        job_id: job_id.into(),
        delivery,
        at: Utc::now(),
        kind,
    }
}

fn started(job_id: &str, node_id: &str, delivery: u64) -> JobEvent {
    event(
        job_id,
        delivery,
        JobEventKind::Started {
            node: "n".into(),
            node_id: node_id.into(),
            driver: "cpu".into(),
            resumed_from_epoch: 0,
        },
    )
}

async fn publish(js: &async_nats::jetstream::Context, node_id: &str, event: &JobEvent) {
    js.publish(
        jobs::event_subject(node_id, &event.job_id),
        serde_json::to_vec(event).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn read_job(stack: &TestStack, job_id: &str) -> JobRecord {
    stack
        .registry_call(
            jobs::subjects::JOBS_GET,
            &JobRef {
                job_id: job_id.into(),
                user_id: None,
                bare: false,
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_nodes_forged_events_change_nothing_and_are_logged_with_its_id() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let token = stack.create_token("sec").await;
        let url = stack.nats.url();
        let (forger, _events) = watched(node_options(&stack, "forger", &token.token), &url)
            .await
            .unwrap();
        let forger_id = register(&forger, &token.token, "forger").await;
        let forger_js = async_nats::jetstream::new(forger.clone());

        // A job running on another node (node-a, delivery 1).
        stack
            .record_job(&train_job("held", 1, JobDriver::Cpu), 0)
            .await;
        let inspector = async_nats::jetstream::new(stack.client().clone());
        publish(&inspector, "node-a", &started("held", "node-a", 1)).await;
        wait_until(Duration::from_secs(20), || async {
            (read_job(&stack, "held").await.status == JobStatus::Running).then_some(())
        })
        .await
        .expect("the job runs on node-a");

        // The forger's own subject, about node-a's job.
        let completed = JobEventKind::Completed {
            model: Box::new(ModelVersion {
                name: "M".into(),
                version: 0,
                user_id: 1,
                job_id: "held".into(),
                weights_key: jobs::weights_key("held", 1),
                card: Default::default(),
                val_accuracy: 1.0,
                created_at: Utc::now().into(),
            }),
        };
        let failed = JobEventKind::Failed {
            error: "forged".into(),
            kind: FailureKind::Crash,
        };
        for forged in [
            started("held", &forger_id, 1),
            started("held", "node-a", 2),
            event("held", 1, failed.clone()),
            event("held", 1, completed.clone()),
            event("held", 0, JobEventKind::Cancelled),
            event("held", u64::MAX, JobEventKind::Cancelled),
        ] {
            publish(&forger_js, &forger_id, &forged).await;
        }
        // The registry applies events in order: once this marker (the real holder's progress
        // report) is applied, every forgery before it was seen and refused.
        let checkpoint = JobEventKind::Checkpoint {
            epoch: 1,
            metrics: jobs::EpochMetrics {
                epoch: 1,
                loss: 0.5,
                train_accuracy: 0.5,
                val_accuracy: 0.5,
            },
        };
        publish(&inspector, "node-a", &event("held", 1, checkpoint)).await;
        let job = wait_until(Duration::from_secs(20), || async {
            let job = read_job(&stack, "held").await;
            (job.checkpoint_epoch == 1).then_some(job)
        })
        .await
        .expect("the holder's checkpoint is applied");
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.node_id.as_deref(), Some("node-a"));
        assert_eq!(job.delivery, 1);
        assert!(job.model.is_none() && !job.refunded);
        let log = stack.registry().output();
        let refusals = log
            .lines()
            .filter(|l| l.contains("refused a job event") && l.contains(&forger_id))
            .count();
        assert_eq!(refusals, 6, "{log}");
    })
    .await;
}

#[tokio::test]
async fn a_completion_whose_stored_weights_do_not_match_fails_the_job_and_lists_nothing() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let token = stack.create_token("sec").await;
        let url = stack.nats.url();
        let (node, _events) = watched(node_options(&stack, "gpu-w", &token.token), &url)
            .await
            .unwrap();
        let node_id = register(&node, &token.token, "gpu-w").await;
        let js = async_nats::jetstream::new(node.clone());
        let job = TrainJob {
            output_model: "W".into(),
            ..train_job("weighed", 1, JobDriver::Cpu)
        };
        stack.record_job(&job, 0).await;
        publish(&js, &node_id, &started("weighed", &node_id, 1)).await;

        // The node stores some weights under the job's key, then reports other ones.
        let key = jobs::weights_key("weighed", 1);
        // The registry and api create the stores as they start.
        let store = wait_until(Duration::from_secs(20), || async {
            js.get_object_store(jobs::UPLOADS_BUCKET).await.ok()
        })
        .await
        .expect("the uploads bucket was never created");
        store
            .put(key.as_str(), &mut &b"real weights"[..])
            .await
            .unwrap();
        let other = b"other weights";
        let mut card = gantry_contracts::models::ModelCard {
            weights_sha256: hex::encode(Sha256::digest(other)),
            weights_bytes: other.len() as u64,
            ..Default::default()
        };
        card.classes = vec!["a".into(), "b".into()];
        let completed = JobEventKind::Completed {
            model: Box::new(ModelVersion {
                name: "W".into(),
                version: 0,
                user_id: 1,
                job_id: "weighed".into(),
                weights_key: key.clone(),
                card,
                val_accuracy: 1.0,
                created_at: Utc::now().into(),
            }),
        };
        publish(&js, &node_id, &event("weighed", 1, completed)).await;

        let job = wait_until(Duration::from_secs(20), || async {
            let job = read_job(&stack, "weighed").await;
            job.status.is_final().then_some(job)
        })
        .await
        .expect("the job ends");
        assert_eq!(job.status, JobStatus::Failed, "{job:?}");
        assert!(job.model.is_none());
        let gone = wait_until(Duration::from_secs(10), || async {
            let info = store.info(key.as_str()).await;
            info.is_ok_and(|i| i.deleted).then_some(())
        })
        .await;
        assert!(gone.is_some(), "the mismatching weights are still stored");
        let log = stack.registry().output();
        assert!(
            log.contains("refused a completion whose weights do not match"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_holders_completion_naming_foreign_weights_or_a_finished_job_deletes_nothing() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let token = stack.create_token("sec").await;
        let url = stack.nats.url();
        let (node, _events) = watched(node_options(&stack, "gpu-h", &token.token), &url)
            .await
            .unwrap();
        let node_id = register(&node, &token.token, "gpu-h").await;
        let js = async_nats::jetstream::new(node.clone());
        let uploads = wait_until(Duration::from_secs(20), || async {
            js.get_object_store(jobs::UPLOADS_BUCKET).await.ok()
        })
        .await
        .expect("the uploads bucket was never created");
        // Someone else's upload, which no event of this node may touch.
        let victim = jobs::weights_key("someone-elses", 1);
        uploads
            .put(victim.as_str(), &mut &b"theirs"[..])
            .await
            .unwrap();

        let job = TrainJob {
            output_model: "Fin".into(),
            ..train_job("fin", 1, JobDriver::Cpu)
        };
        stack.record_job(&job, 0).await;
        publish(&js, &node_id, &started("fin", &node_id, 1)).await;
        let completion = |key: &str, weights: &[u8]| {
            let mut card = gantry_contracts::models::ModelCard {
                weights_sha256: hex::encode(Sha256::digest(weights)),
                weights_bytes: weights.len() as u64,
                ..Default::default()
            };
            card.classes = vec!["a".into(), "b".into()];
            JobEventKind::Completed {
                model: Box::new(ModelVersion {
                    name: "Fin".into(),
                    version: 0,
                    user_id: 1,
                    job_id: "fin".into(),
                    weights_key: key.to_owned(),
                    card,
                    val_accuracy: 1.0,
                    created_at: Utc::now().into(),
                }),
            }
        };
        // While it runs: a completion pointing at someone else's weights changes nothing.
        publish(
            &js,
            &node_id,
            &event("fin", 1, completion(&victim, b"theirs")),
        )
        .await;
        // Then the real one.
        let own = jobs::weights_key("fin", 1);
        uploads.put(own.as_str(), &mut &b"mine"[..]).await.unwrap();
        publish(&js, &node_id, &event("fin", 1, completion(&own, b"mine"))).await;
        let done = wait_until(Duration::from_secs(20), || async {
            let job = read_job(&stack, "fin").await;
            job.status.is_final().then_some(job)
        })
        .await
        .expect("the job ends");
        assert_eq!(done.status, JobStatus::Completed, "{done:?}");
        assert_eq!(
            done.model.as_ref().map(|m| m.weights_key.as_str()),
            Some(own.as_str())
        );

        // Over: another completion, naming someone else's weights, changes and deletes nothing.
        publish(
            &js,
            &node_id,
            &event("fin", 1, completion(&victim, b"theirs")),
        )
        .await;
        // The holder's marker after it: once applied (refused as over), the forgery was too.
        publish(&js, &node_id, &event("fin", 1, JobEventKind::Cancelled)).await;
        let log = wait_until(Duration::from_secs(20), || async {
            let log = stack.registry().output();
            (log.matches("event changes nothing").count() >= 3).then_some(log)
        })
        .await
        .expect("the registry refused the late events");
        let after = read_job(&stack, "fin").await;
        assert_eq!(after.status, JobStatus::Completed, "{log}");
        assert_eq!(after.model, done.model);
        assert!(
            uploads
                .info(victim.as_str())
                .await
                .is_ok_and(|i| !i.deleted),
            "someone else's upload was deleted"
        );
        let inspector = async_nats::jetstream::new(stack.client().clone());
        let models = inspector
            .get_object_store(jobs::MODELS_BUCKET)
            .await
            .unwrap();
        assert!(
            models.info(own.as_str()).await.is_ok_and(|i| !i.deleted),
            "the listed version's weights were deleted"
        );
    })
    .await;
}
