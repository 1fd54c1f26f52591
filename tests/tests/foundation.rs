//! The foundation: every service starts against a real NATS and store, reports ready, answers
//! `$SRV.PING`, follows NATS going away and coming back, refuses bad configuration, and stops
//! cleanly on SIGTERM.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use gantry_testing::{metric, wait_until, ServiceProcess, TestStack, ADMIN_TOKEN, READY};

const LIMIT: Duration = Duration::from_secs(240);

/// Names of the micro services answering `$SRV.PING` within a second.
async fn ping_names(client: &async_nats::Client) -> BTreeSet<String> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .unwrap();
    let mut names = BTreeSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(msg) = sub.next() => {
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                names.insert(v["name"].as_str().unwrap().to_owned());
            }
        }
    }
    names
}

/// The core services and a CPU trainer (joined with a token made by `gantry-registry
/// create-token`), all ready.
async fn everything(stack: &mut TestStack) -> ServiceProcess {
    stack.start_core().await;
    let token = stack.create_token_cli("test").await;
    let trainer = stack.spawn("gantry-trainer", &[("GANTRY_CLUSTER_TOKEN", &token)]);
    trainer.wait_ready(READY).await;
    trainer
}

/// SIGTERM each of `services` in turn; each must exit 0 within `within`.
async fn terminate_all(services: Vec<ServiceProcess>, within: Duration, context: &str) {
    for mut svc in services {
        let status = svc.terminate(within).await.unwrap_or_else(|| {
            panic!(
                "{} did not stop within {within:?} of SIGTERM{context}:\n{}",
                svc.name,
                svc.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{} exit status:\n{}",
            svc.name,
            svc.output()
        );
    }
}

#[tokio::test]
async fn all_services_start_report_ready_and_answer_srv_ping() {
    TestStack::run(LIMIT, |mut stack| async move {
        let _trainer = everything(&mut stack).await;
        let client = stack.client().clone();
        let mut last = BTreeSet::new();
        for _ in 0..10 {
            last = ping_names(&client).await;
            if last.len() == 4 {
                break;
            }
        }
        let expected: BTreeSet<String> = [
            "gantry-api",
            "gantry-auth",
            "gantry-registry",
            "gantry-trainer",
        ]
        .map(String::from)
        .into();
        assert_eq!(last, expected, "not all four services answered");

        // $SRV.INFO names the service and its version.
        let info = client
            .request("$SRV.INFO.gantry-auth", "".into())
            .await
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
        assert_eq!(info["name"], "gantry-auth");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    })
    .await;
}

#[tokio::test]
async fn readyz_follows_nats_going_down_and_coming_back() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-api", "gantry-auth"]).await;
        stack.nats.stop();
        for svc in [stack.api(), stack.auth()] {
            let down = wait_until(Duration::from_secs(10), || async {
                (svc.readyz().await == Some(503)).then_some(())
            })
            .await;
            assert!(down.is_some(), "{} still ready with NATS stopped", svc.name);
        }

        stack.nats.restart().await;
        stack.api().wait_ready(Duration::from_secs(20)).await;
        stack.auth().wait_ready(Duration::from_secs(20)).await;
    })
    .await;
}

#[tokio::test]
async fn a_service_started_while_nats_is_down_becomes_ready_when_it_comes_up() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.nats.stop();
        let mut auth = stack.spawn("gantry-auth", &[]);
        let api = stack.spawn("gantry-api", &[]);

        // It waits: alive, not ready, not exited.
        let alive = wait_until(Duration::from_secs(20), || async {
            (api.readyz().await == Some(503)).then_some(())
        })
        .await;
        assert!(alive.is_some(), "api should answer 503 while NATS is down");
        assert!(auth.try_exit().is_none(), "auth exited while NATS was down");

        stack.nats.restart().await;
        api.wait_ready(Duration::from_secs(30)).await;
        auth.wait_ready(Duration::from_secs(30)).await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_configuration_value_exits_non_zero_naming_the_variable() {
    TestStack::run(LIMIT, |stack| async move {
        for (bin, var, value) in [
            ("gantry-api", "GANTRY_HTTP_ADDR", "nonsense"),
            ("gantry-auth", "GANTRY_HEALTH_ADDR", "localhost:port"),
            ("gantry-registry", "NATS_URL", "http://wrong-scheme"),
            ("gantry-trainer", "GANTRY_WORKERS", "lots"),
            ("gantry-auth", "GANTRY_ADMIN_API_TOKEN", "too-short"),
            ("gantry-auth", "GANTRY_SESSION_TTL", "0"),
            ("gantry-trainer", "GANTRY_CACHE_MAX_GB", "NaN"),
        ] {
            let mut svc = stack.spawn(bin, &[(var, value)]);
            let status = svc
                .wait_exit(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{bin} kept running with {var}={value}"));
            assert!(!status.success(), "{bin} exited 0 with {var}={value}");
            let out = svc.output();
            assert!(
                out.contains(var),
                "{bin}'s message does not name {var}:\n{out}"
            );
            if var == "GANTRY_ADMIN_API_TOKEN" {
                assert!(!out.contains("too-short"), "a secret was echoed:\n{out}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_each_service_within_seconds_with_code_zero() {
    TestStack::run(LIMIT, |mut stack| async move {
        let trainer = everything(&mut stack).await;
        let services = vec![
            stack.take("gantry-api"),
            stack.take("gantry-auth"),
            stack.take("gantry-registry"),
            trainer,
        ];
        terminate_all(services, Duration::from_secs(8), "").await;
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_each_service_with_code_zero_even_while_nats_is_down() {
    TestStack::run(LIMIT, |mut stack| async move {
        let trainer = everything(&mut stack).await;
        stack.nats.stop();
        for svc in [stack.api(), stack.auth()] {
            let down = wait_until(Duration::from_secs(10), || async {
                (svc.readyz().await == Some(503)).then_some(())
            })
            .await;
            assert!(down.is_some(), "{} still ready with NATS stopped", svc.name);
        }
        let services = vec![
            stack.take("gantry-api"),
            stack.take("gantry-auth"),
            stack.take("gantry-registry"),
            trainer,
        ];
        terminate_all(services, Duration::from_secs(10), " with NATS down").await;
    })
    .await;
}

#[tokio::test]
async fn every_service_exports_prometheus_metrics_that_follow_its_work() {
    TestStack::run(LIMIT, |mut stack| async move {
        let trainer = everything(&mut stack).await;
        let get = |path: &str, token: Option<&str>| {
            let mut req = stack.http().get(stack.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let admin = Some(ADMIN_TOKEN);
        assert_eq!(get("/admin/api/users", admin).await, 200);
        assert_eq!(get("/api/admin/users", admin).await, 200);
        assert_eq!(get("/admin/api/users", None).await, 401);
        assert_eq!(get("/admin/api/jobs/no-such-job", admin).await, 404);
        // The node shows up connected (the registry's gauge follows its sweep).
        let joined = wait_until(Duration::from_secs(30), || async {
            let text = stack.registry().metrics().await;
            (metric(&text, r#"gantry_registry_nodes{state="connected"}"#) == 1.0).then_some(())
        })
        .await;
        assert!(
            joined.is_some(),
            "the registry never counted the trainer connected:\n{}",
            stack.registry().metrics().await
        );
        assert_eq!(get("/admin/api/cluster_nodes", admin).await, 200);

        // The api counts requests by route (ids folded) and status.
        let api = stack.api().metrics().await;
        for (series, want) in [
            (
                r#"gantry_http_requests_total{method="GET",route="/admin/api/users",status="200"}"#,
                1.0,
            ),
            (
                r#"gantry_http_requests_total{method="GET",route="/api/admin/users",status="200"}"#,
                1.0,
            ),
            (
                r#"gantry_http_requests_total{method="GET",route="/admin/api/users",status="401"}"#,
                1.0,
            ),
            (
                r#"gantry_http_requests_total{method="GET",route="/admin/api/jobs/{id}",status="404"}"#,
                1.0,
            ),
        ] {
            assert_eq!(metric(&api, series), want, "{series}:\n{api}");
        }
        assert!(
            !api.contains("no-such-job"),
            "a client's path leaked into a label"
        );
        assert!(
            metric(
                &api,
                r#"gantry_http_request_duration_seconds_count{method="GET",route="/admin/api/users"}"#
            ) >= 2.0
        );

        // Auth answered the two listings; the registry the node listing (as a whole body,
        // `listing.body`) and the trainer's joining.
        let auth = stack.auth().metrics().await;
        assert_eq!(
            metric(
                &auth,
                r#"gantry_nats_requests_total{endpoint="users.list",outcome="ok"}"#
            ),
            2.0,
            "{auth}"
        );
        let registry = stack.registry().metrics().await;
        assert!(
            metric(
                &registry,
                r#"gantry_nats_requests_total{endpoint="listing.body",outcome="ok"}"#
            ) >= 1.0,
            "{registry}"
        );
        assert!(
            metric(
                &registry,
                r#"gantry_nats_request_duration_seconds_count{endpoint="listing.body"}"#
            ) >= 1.0
        );

        // The trainer is idle.
        let node = trainer.metrics().await;
        assert!(node.contains("gantry_trainer_jobs_running 0"), "{node}");
    })
    .await;
}
