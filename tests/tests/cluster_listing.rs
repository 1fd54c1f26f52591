//! The cluster listings over HTTP, over the real binaries: one consistent snapshot per listing
//! while nodes join and heartbeat (its body cut into many pieces, from either of two registry
//! replicas), `limit`/`offset`, the `connected`/`driver`/`token` filters, `ETag` and 304, gzip.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gantry_contracts::registry::{
    plan_processes, ClusterClients, ClusterNodes, ClusterToken, Driver, GpuDevice, GpuInfo,
    Heartbeat, Inventory, NodeSettings, RegisterNode, Registered,
};
use gantry_contracts::subjects::{self, registry as ep};
use gantry_testing::{TestStack, ADMIN_TOKEN, READY};
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

const LIMIT: Duration = Duration::from_secs(240);
const NODES: &str = "/api/admin/cluster_nodes";
const CLIENTS: &str = "/admin/api/cluster_clients";

fn inventory(gpus: u32) -> Inventory {
    let mut backends = Vec::new();
    if gpus > 0 {
        backends.push(Driver::Cuda);
    }
    backends.push(Driver::Cpu);
    Inventory {
        gpu_info: GpuInfo {
            cuda_available: gpus > 0,
            rocm_available: false,
            cuda_devices: gpus,
            rocm_devices: 0,
            available_backends: backends,
        },
        gpus: (0..gpus)
            .map(|index| GpuDevice {
                index,
                backend: Driver::Cuda,
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_total_mib: 81559,
            })
            .collect(),
        driver_version: (gpus > 0).then(|| "580.65.06".into()),
        cuda_version: None,
        rocm_version: None,
        host_memory_gb: 64.0,
        cpus: 16,
        notes: vec![],
    }
}

/// Register `hostname` with `token` (straight over the bus, as a trainer does): its node id.
async fn register(stack: &TestStack, token: &str, hostname: &str, gpus: u32) -> String {
    let r: Registered = stack
        .registry_call(
            ep::REGISTER,
            &RegisterNode {
                token: token.into(),
                hostname: hostname.into(),
                ip_address: "10.0.0.5".into(),
                weight: 100,
                workers: 2,
                analysis_workers: 0,
                inventory: inventory(gpus),
                version: "0".into(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("register {hostname}: {e:?}"));
    r.node_id
}

/// The heartbeat `node_id` (with `gpus` GPUs and no job) sends.
fn heartbeat(node_id: &str, gpus: u32, uptime: f64, stopping: bool) -> Heartbeat {
    let settings = NodeSettings::default();
    let (driver, processes) =
        plan_processes(&inventory(gpus).gpu_info, &settings, &[None, None], None);
    Heartbeat {
        node_id: node_id.into(),
        busy_slots: 0,
        gpu_memory_used_mib: None,
        processes,
        driver,
        settings,
        uptime_seconds: uptime,
        stopping,
        gpu_stats: vec![],
        unhealthy: None,
    }
}

async fn beat(client: &async_nats::Client, hb: &Heartbeat) {
    client
        .publish(
            subjects::node_heartbeat(&hb.node_id),
            serde_json::to_vec(hb).unwrap().into(),
        )
        .await
        .unwrap();
}

/// `GET path` as the admin with `headers`: status, headers, body bytes.
async fn get(
    stack: &TestStack,
    path: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = stack.http().get(stack.url(path)).bearer_auth(ADMIN_TOKEN);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    let resp = req.send().await.expect("an HTTP answer");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (
        status,
        headers,
        resp.bytes().await.expect("a body").to_vec(),
    )
}

fn hostnames(nodes: &ClusterNodes) -> Vec<String> {
    nodes.nodes.iter().map(|n| n.hostname.clone()).collect()
}

/// `GET path` expecting 200: the parsed body and the `X-Total-Count` header.
async fn nodes_at(stack: &TestStack, path: &str) -> (Vec<String>, u64) {
    let (status, headers, body) = get(stack, path, &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    let nodes: ClusterNodes = serde_json::from_slice(&body).unwrap();
    let total = headers["x-total-count"].to_str().unwrap().parse().unwrap();
    (hostnames(&nodes), total)
}

#[tokio::test]
async fn a_listing_is_one_snapshot_while_nodes_join_and_heartbeat() {
    TestStack::run(LIMIT, |mut stack| async move {
        // Bodies cut into 4 KiB pieces: a listing of 60 nodes takes a dozen requests, any of
        // which a join or heartbeat may land between.
        stack.set_env("GANTRY_LISTING_CHUNK_KB", "4");
        stack.set_env("GANTRY_HEARTBEAT_INTERVAL", "2");
        stack.start_core().await;
        let mut second = stack.spawn("gantry-registry", &[]);
        second.wait_ready(READY).await;
        let token = stack.create_token("snapshot").await.token;
        let mut first = Vec::new();
        for i in 0..60 {
            let host = format!("sim-{i:03}");
            first.push((host.clone(), register(&stack, &token, &host, i % 3).await));
        }

        // Meanwhile: more nodes join and every node heartbeats, without pause.
        let stop = Arc::new(AtomicBool::new(false));
        let joined = Arc::new(AtomicUsize::new(0));
        let churn = {
            let (stop, joined) = (stop.clone(), joined.clone());
            let client = stack.client().clone();
            let first = first.clone();
            let token = token.clone();
            async move {
                let mut beats = 0u64;
                let mut late = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for (i, (_, id)) in first.iter().enumerate() {
                        beats += 1;
                        beat(&client, &heartbeat(id, i as u32 % 3, beats as f64, false)).await;
                    }
                    let host = format!("late-{late:03}");
                    let req = RegisterNode {
                        token: token.clone(),
                        hostname: host,
                        ip_address: "10.0.0.6".into(),
                        weight: 100,
                        workers: 2,
                        analysis_workers: 0,
                        inventory: inventory(1),
                        version: "0".into(),
                    };
                    let reply = client
                        .request(
                            subjects::registry(ep::REGISTER),
                            serde_json::to_vec(&req).unwrap().into(),
                        )
                        .await;
                    if reply.is_ok() {
                        late += 1;
                        joined.store(late, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let churn = tokio::spawn(churn);

        // Both replicas hear of every registration (an announcement, or a heartbeat that makes
        // them read it from the store): wait until listings keep showing all 60.
        let expected: BTreeSet<String> = first.iter().map(|(h, _)| h.clone()).collect();
        let mut in_a_row = 0;
        for _ in 0..600 {
            let (_, _, body) = get(&stack, NODES, &[]).await;
            let nodes: ClusterNodes = serde_json::from_slice(&body).unwrap();
            let names: BTreeSet<String> = hostnames(&nodes).into_iter().collect();
            in_a_row = if expected.is_subset(&names) {
                in_a_row + 1
            } else {
                0
            };
            if in_a_row == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            in_a_row, 10,
            "the replicas never both listed the first 60 nodes"
        );
        let mut listings = 0;
        while listings < 20 || joined.load(Ordering::Relaxed) < 5 {
            let (status, _, body) = get(&stack, NODES, &[]).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            assert!(body.len() > 16 * 1024, "the body spans many pieces");
            let nodes: ClusterNodes = serde_json::from_slice(&body).unwrap();
            let names = hostnames(&nodes);
            let unique: BTreeSet<String> = names.iter().cloned().collect();
            assert_eq!(unique.len(), names.len(), "a node listed twice: {names:?}");
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "out of order");
            assert!(
                expected.is_subset(&unique),
                "missing: {:?}",
                expected.difference(&unique).collect::<Vec<_>>()
            );
            assert_eq!(
                nodes.master_stats.total_nodes as usize,
                names.len(),
                "the totals and the entries come from different moments"
            );

            let (status, _, body) = get(&stack, CLIENTS, &[]).await;
            assert_eq!(status, StatusCode::OK);
            let clients: ClusterClients = serde_json::from_slice(&body).unwrap();
            let names: Vec<&str> = clients
                .clients
                .iter()
                .map(|c| c.hostname.as_str())
                .collect();
            let unique: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(unique.len(), names.len(), "a client listed twice");
            assert!(names.windows(2).all(|w| w[0] < w[1]), "out of order");
            listings += 1;
        }
        stop.store(true, Ordering::Relaxed);
        churn.await.unwrap();
        second.kill9();
    })
    .await;
}

#[tokio::test]
async fn listings_page_filter_and_answer_not_modified_and_gzip() {
    TestStack::run(LIMIT, |mut stack| async move {
        // No node expires during the test: the listing changes only when the test changes it.
        stack.set_env("GANTRY_HEARTBEAT_INTERVAL", "120");
        stack.start_core().await;
        let a: ClusterToken = stack.create_token("Team A").await;
        let b: ClusterToken = stack.create_token("Team B").await;
        let a1 = register(&stack, &a.token, "a-1", 0).await;
        register(&stack, &a.token, "a-2", 2).await;
        register(&stack, &a.token, "a-3", 0).await;
        register(&stack, &b.token, "b-1", 1).await;
        let gone = register(&stack, &b.token, "b-2", 0).await;
        // b-2 stops: listed, disconnected.
        beat(stack.client(), &heartbeat(&gone, 0, 5.0, true)).await;
        let everyone = ["a-1", "a-2", "a-3", "b-1", "b-2"];
        let mut last = Vec::new();
        for _ in 0..100 {
            let (names, _) = nodes_at(&stack, &format!("{NODES}?connected=false")).await;
            if names == ["b-2"] {
                break;
            }
            last = names;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (names, total) = nodes_at(&stack, &format!("{NODES}?connected=false")).await;
        assert_eq!(
            (names, total),
            (vec!["b-2".to_owned()], 1),
            "last seen {last:?}"
        );

        // The default answer: every node, in the page's shape, with its ETag.
        let (status, headers, plain) = get(&stack, NODES, &[]).await;
        assert_eq!(status, StatusCode::OK);
        let raw: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        let keys: Vec<&String> = raw.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["master_stats", "nodes"]);
        let all: ClusterNodes = serde_json::from_slice(&plain).unwrap();
        assert_eq!(hostnames(&all), everyone);
        assert_eq!(headers["x-total-count"], "5");
        assert_eq!(all.master_stats.total_nodes, 5);
        assert_eq!(all.master_stats.connected_nodes, 4);
        let etag = headers[ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        // Unchanged: 304, no body.
        let (status, headers, body) = get(&stack, NODES, &[(IF_NONE_MATCH, &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert_eq!(headers[ETAG], etag.as_str());

        // gzip for a client that accepts it: the same bytes once unzipped, its own ETag, which
        // If-None-Match also accepts.
        let (status, headers, zipped) = get(&stack, NODES, &[(ACCEPT_ENCODING, "gzip")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_ENCODING], "gzip");
        assert!(headers["vary"]
            .to_str()
            .unwrap()
            .contains("Accept-Encoding"));
        let gz_etag = headers[ETAG].to_str().unwrap().to_owned();
        assert_ne!(gz_etag, etag);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);
        let (status, _, _) = get(
            &stack,
            NODES,
            &[(ACCEPT_ENCODING, "gzip"), (IF_NONE_MATCH, &gz_etag)],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        let (_, headers, _) = get(&stack, NODES, &[(ACCEPT_ENCODING, "gzip;q=0")]).await;
        assert!(headers.get(CONTENT_ENCODING).is_none());

        // Paging and filters.
        let page = |q: &str| {
            let (stack, path) = (&stack, format!("{NODES}?{q}"));
            async move { nodes_at(stack, &path).await }
        };
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(page("limit=2").await, (owned(&["a-1", "a-2"]), 5));
        assert_eq!(page("limit=2&offset=2").await, (owned(&["a-3", "b-1"]), 5));
        assert_eq!(page("offset=4").await, (owned(&["b-2"]), 5));
        assert_eq!(page("offset=9").await, (vec![], 5));
        assert_eq!(page("connected=true").await.1, 4);
        assert_eq!(page("driver=cuda").await, (owned(&["a-2", "b-1"]), 2));
        assert_eq!(page("driver=cpu").await, (owned(&["a-1", "a-3", "b-2"]), 3));
        let listed_b = format!("{}...", &b.token[..8]);
        assert_eq!(
            page(&format!("token={listed_b}")).await,
            (owned(&["b-1", "b-2"]), 2)
        );
        assert_eq!(
            page("token=team%20a").await.0,
            owned(&["a-1", "a-2", "a-3"])
        );
        assert_eq!(
            page(&format!("token={}&connected=true&limit=1", &a.token[..8])).await,
            (owned(&["a-1"]), 3)
        );
        // The totals stay those of every node.
        let (_, _, body) = get(&stack, &format!("{NODES}?driver=cuda"), &[]).await;
        let some: ClusterNodes = serde_json::from_slice(&body).unwrap();
        assert_eq!(some.master_stats.total_nodes, 5);

        // The clients listing: connected nodes, paged and filtered the same way.
        let (status, headers, body) =
            get(&stack, &format!("{CLIENTS}?driver=cuda&limit=1"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-total-count"], "2");
        let clients: ClusterClients = serde_json::from_slice(&body).unwrap();
        let names: Vec<&str> = clients
            .clients
            .iter()
            .map(|c| c.hostname.as_str())
            .collect();
        assert_eq!(names, ["a-2"]);
        let (_, headers, body) = get(&stack, CLIENTS, &[]).await;
        let raw: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            raw.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["clients"]
        );
        assert_eq!(raw["clients"].as_array().unwrap().len(), 4);
        let clients_etag = headers[ETAG].to_str().unwrap().to_owned();

        // Bad parameters: 400 in the usual envelope.
        for q in [
            "driver=quantum",
            "limit=0",
            "connected=maybe",
            "limit=100001",
        ] {
            let (status, _, body) = get(&stack, &format!("{NODES}?{q}"), &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
            let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(err["error"]["code"], "bad_request", "{q}: {err}");
        }

        // A change: the old ETag no longer matches, in either listing.
        register(&stack, &b.token, "b-3", 0).await;
        let (status, headers, body) = get(&stack, NODES, &[(IF_NONE_MATCH, &etag)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(headers[ETAG], etag.as_str());
        let now: ClusterNodes = serde_json::from_slice(&body).unwrap();
        assert_eq!(now.nodes.len(), 6);
        let (status, _, _) = get(&stack, CLIENTS, &[(IF_NONE_MATCH, &clients_etag)]).await;
        assert_eq!(status, StatusCode::OK);

        // What heartbeats alone refresh (a node's uptime) may be answered from the body held
        // while the next is fetched, but it shows within moments and never goes back.
        beat(stack.client(), &heartbeat(&a1, 0, 4242.0, false)).await;
        let uptime = |nodes: &ClusterNodes| {
            nodes
                .nodes
                .iter()
                .find(|n| n.hostname == "a-1")
                .map(|n| n.uptime_seconds)
        };
        let mut seen = Vec::new();
        loop {
            let (_, _, body) = get(&stack, NODES, &[]).await;
            let nodes: ClusterNodes = serde_json::from_slice(&body).unwrap();
            assert_eq!(nodes.nodes.len(), 6, "a node joining is never held back");
            let up = uptime(&nodes).expect("a-1 listed");
            seen.push(up);
            // Listed as reported plus the time since (the uptime goes on).
            if up >= 4242.0 {
                break;
            }
            assert!(
                seen.len() < 400,
                "the uptime never reached the listing: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, _, body) = get(&stack, NODES, &[]).await;
        let nodes: ClusterNodes = serde_json::from_slice(&body).unwrap();
        assert!(
            uptime(&nodes).is_some_and(|up| up >= 4242.0),
            "a listing went back: {seen:?}"
        );
    })
    .await;
}
