//! The foundation: every service starts against a real NATS and store, reports ready, answers
//! `$SRV.PING`, follows NATS going away and coming back, refuses bad configuration, and stops
//! cleanly on SIGTERM.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use gantry_testing::{metric, wait_until, Stack};

const READY: Duration = Duration::from_secs(60);

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

#[tokio::test]
async fn all_services_start_report_ready_and_answer_srv_ping() {
    let stack = Stack::start().await;
    let core = stack.start_core().await;
    let trainer = stack.trainer();
    trainer.wait_ready(READY).await;

    let client = stack.nats.client().await;
    let names = wait_until(Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let names = ping_names(&client).await;
            (names.len() == 4).then_some(names)
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not all four services answered: {:?}",
            futures::executor::block_on(ping_names(&client))
        )
    });
    let expected: BTreeSet<String> = [
        "gantry-api",
        "gantry-auth",
        "gantry-registry",
        "gantry-trainer",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);

    // $SRV.INFO names the service and its version.
    let info = client
        .request("$SRV.INFO.gantry-auth", "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["name"], "gantry-auth");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    drop(core);
}

#[tokio::test]
async fn readyz_follows_nats_going_down_and_coming_back() {
    let mut stack = Stack::start().await;
    let api = stack.spawn("gantry-api", &[]);
    let auth = stack.spawn("gantry-auth", &[]);
    api.wait_ready(READY).await;
    auth.wait_ready(READY).await;

    stack.nats.stop();
    for svc in [&api, &auth] {
        let down = wait_until(Duration::from_secs(10), || async {
            (svc.readyz().await == Some(503)).then_some(())
        })
        .await;
        assert!(down.is_some(), "{} still ready with NATS stopped", svc.name);
    }

    stack.nats.restart().await;
    api.wait_ready(Duration::from_secs(20)).await;
    auth.wait_ready(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_service_started_while_nats_is_down_becomes_ready_when_it_comes_up() {
    let mut stack = Stack::start().await;
    stack.nats.stop();
    let mut auth = stack.spawn("gantry-auth", &[]);
    let api = stack.spawn("gantry-api", &[]);

    // It waits: alive, not ready, not exited.
    let alive = wait_until(Duration::from_secs(20), || async {
        (api.readyz().await == Some(503)).then_some(())
    })
    .await;
    assert!(
        alive.is_some(),
        "api should answer 503 while NATS is down:\n{}",
        api.output()
    );
    assert!(
        auth.try_exit().is_none(),
        "auth exited while NATS was down:\n{}",
        auth.output()
    );

    stack.nats.restart().await;
    api.wait_ready(Duration::from_secs(30)).await;
    auth.wait_ready(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_bad_configuration_value_exits_non_zero_naming_the_variable() {
    let stack = Stack::start().await;
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
}

#[tokio::test]
async fn sigterm_stops_each_service_within_seconds_with_code_zero() {
    let stack = Stack::start().await;
    let core = stack.start_core().await;
    let trainer = stack.trainer();
    trainer.wait_ready(READY).await;
    let gantry_testing::Core {
        auth,
        registry,
        api,
    } = core;
    for mut svc in [api, auth, registry, trainer] {
        let status = svc
            .terminate(Duration::from_secs(8))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{} did not stop within 8 s of SIGTERM:\n{}",
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
async fn sigterm_stops_each_service_with_code_zero_even_while_nats_is_down() {
    let mut stack = Stack::start().await;
    let core = stack.start_core().await;
    let trainer = stack.trainer();
    trainer.wait_ready(READY).await;
    stack.nats.stop();
    for svc in [&core.api, &core.auth] {
        let down = wait_until(Duration::from_secs(10), || async {
            (svc.readyz().await == Some(503)).then_some(())
        })
        .await;
        assert!(down.is_some(), "{} still ready with NATS stopped", svc.name);
    }
    let gantry_testing::Core {
        auth,
        registry,
        api,
    } = core;
    for mut svc in [api, auth, registry, trainer] {
        let status = svc
            .terminate(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{} did not stop within 10 s of SIGTERM with NATS down:\n{}",
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
async fn every_service_exports_prometheus_metrics_that_follow_its_work() {
    let stack = Stack::start().await;
    let core = stack.start_core().await;
    let trainer = stack.trainer();
    trainer.wait_ready(READY).await;
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut req = http.get(format!("{}{path}", core.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let admin = Some(gantry_testing::ADMIN_TOKEN);
    assert_eq!(get("/admin/api/users", admin).await, 200);
    assert_eq!(get("/api/admin/users", admin).await, 200);
    assert_eq!(get("/admin/api/users", None).await, 401);
    assert_eq!(get("/admin/api/jobs/no-such-job", admin).await, 404);
    // The node shows up connected (the registry's gauge follows its sweep).
    let joined = wait_until(Duration::from_secs(30), || async {
        let text = core.registry.metrics().await;
        (metric(&text, r#"gantry_registry_nodes{state="connected"}"#) == 1.0).then_some(())
    })
    .await;
    assert!(
        joined.is_some(),
        "the registry never counted the trainer connected:\n{}",
        core.registry.metrics().await
    );
    assert_eq!(get("/admin/api/cluster_nodes", admin).await, 200);

    // The api counts requests by route (ids folded) and status.
    let api = core.api.metrics().await;
    assert_eq!(
        metric(
            &api,
            r#"gantry_http_requests_total{method="GET",route="/admin/api/users",status="200"}"#
        ),
        1.0,
        "{api}"
    );
    assert_eq!(
        metric(
            &api,
            r#"gantry_http_requests_total{method="GET",route="/api/admin/users",status="200"}"#
        ),
        1.0,
        "{api}"
    );
    assert_eq!(
        metric(
            &api,
            r#"gantry_http_requests_total{method="GET",route="/admin/api/users",status="401"}"#
        ),
        1.0,
        "{api}"
    );
    assert_eq!(
        metric(
            &api,
            r#"gantry_http_requests_total{method="GET",route="/admin/api/jobs/{id}",status="404"}"#
        ),
        1.0,
        "{api}"
    );
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

    // Auth answered the two listings; the registry the node listing and the trainer's joining.
    let auth = core.auth.metrics().await;
    assert_eq!(
        metric(
            &auth,
            r#"gantry_nats_requests_total{endpoint="users.list",outcome="ok"}"#
        ),
        2.0,
        "{auth}"
    );
    let registry = core.registry.metrics().await;
    assert!(
        metric(
            &registry,
            r#"gantry_nats_requests_total{endpoint="nodes.list",outcome="ok"}"#
        ) >= 1.0,
        "{registry}"
    );
    assert!(
        metric(
            &registry,
            r#"gantry_nats_request_duration_seconds_count{endpoint="nodes.list"}"#
        ) >= 1.0
    );

    // The trainer is idle.
    let node = trainer.metrics().await;
    assert!(node.contains("gantry_trainer_jobs_running 0"), "{node}");
}
