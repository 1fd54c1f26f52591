use super::*;

use gantry_contracts::registry::{
    ClusterClients, ClusterNodes, GpuInfo, Inventory, NodeSettings, Process,
};

use crate::store::NodeRecord;
use crate::view::Timing;

const TIMING: Timing = Timing {
    interval: 1.0,
    misses: 3,
    retention: 600.0,
};

fn record(hostname: &str, token: (i64, &str, &str)) -> NodeRecord {
    let (token_id, token_prefix, token_name) = token;
    let gpu_info = GpuInfo {
        cuda_available: hostname.starts_with("gpu"),
        rocm_available: false,
        cuda_devices: u32::from(hostname.starts_with("gpu")),
        rocm_devices: 0,
        available_backends: if hostname.starts_with("gpu") {
            vec![Driver::Cuda, Driver::Cpu]
        } else {
            vec![Driver::Cpu]
        },
    };
    NodeRecord {
        node_id: crate::tokens::node_id(hostname, token_id),
        hostname: hostname.into(),
        token_id,
        token_name: token_name.into(),
        token_prefix: token_prefix.into(),
        ip_address: "10.0.0.1".into(),
        weight: 100,
        workers: 1,
        analysis_workers: 0,
        inventory: Inventory {
            gpu_info,
            gpus: vec![],
            driver_version: None,
            cuda_version: None,
            rocm_version: None,
            host_memory_gb: 16.0,
            cpus: 8,
            notes: vec![],
        },
        version: "test".into(),
        registered_at: 1000.0,
        settings: NodeSettings::default(),
        completed_jobs: 0,
    }
}

const A: (i64, &str, &str) = (1, "aaaa1111", "Team A");
const B: (i64, &str, &str) = (2, "bbbb2222", "Team B");

/// A view of `hosts` (hostname, token), all registered at t=1000.
fn view(hosts: &[(&str, (i64, &str, &str))]) -> View {
    let mut v = View::new(TIMING);
    for (h, t) in hosts {
        v.register(record(h, *t), 1000.0);
    }
    v
}

fn snapshot(v: &View, now: f64) -> Snapshot {
    let listed = v.listed(now);
    let rows: Vec<_> = listed
        .iter()
        .map(|n| (n.cluster_node(now), n.connected.then(|| n.cluster_client())))
        .collect();
    Snapshot::build(1, v.revisions(), &View::stats(&listed, 5.0), &rows)
}

fn nodes(body: &[u8]) -> ClusterNodes {
    serde_json::from_slice(body).unwrap()
}

fn hostnames(body: &[u8]) -> Vec<String> {
    nodes(body).nodes.into_iter().map(|n| n.hostname).collect()
}

fn query(listing: Listing) -> BodyQuery {
    BodyQuery::all(listing)
}

#[test]
fn the_whole_body_is_exactly_what_serde_makes_of_the_listing() {
    let v = view(&[("gpu2", A), ("cpu1", B), ("gpu1", A)]);
    let s = snapshot(&v, 1000.5);
    let (stats, all) = v.cluster_nodes(1000.5, 5.0);
    let expected = serde_json::to_vec(&ClusterNodes {
        master_stats: stats,
        nodes: all,
        next_offset: None,
    })
    .unwrap();
    let (body, total) = s.body(&query(Listing::Nodes));
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        std::str::from_utf8(&expected).unwrap()
    );
    assert_eq!(total, 3);
    let expected = serde_json::to_vec(&ClusterClients {
        clients: v.cluster_clients(1000.5),
        next_offset: None,
    })
    .unwrap();
    let (body, total) = s.body(&query(Listing::Clients));
    assert_eq!(body, expected);
    assert_eq!(total, 3);
}

#[test]
fn an_empty_cluster_lists_no_entry() {
    let s = snapshot(&View::new(TIMING), 1000.0);
    assert!(nodes(&s.body(&query(Listing::Nodes)).0).nodes.is_empty());
    let clients: ClusterClients =
        serde_json::from_slice(&s.body(&query(Listing::Clients)).0).unwrap();
    assert!(clients.clients.is_empty());
    let page = s.page(Listing::Nodes, &ListQuery::default(), 1 << 20);
    assert_eq!(nodes(&page).next_offset, None);
}

#[test]
fn filters_pick_by_connection_driver_and_token() {
    let mut v = view(&[("gpu1", A), ("cpu1", A), ("cpu2", B), ("gpu2", B)]);
    // cpu2 goes silent past the expiry: listed, disconnected.
    for h in ["gpu1", "cpu1", "gpu2"] {
        let id = crate::tokens::node_id(h, if h == "gpu2" { 2 } else { 1 });
        let n = v.node(&id).unwrap();
        let hb = gantry_contracts::registry::Heartbeat {
            node_id: id.clone(),
            busy_slots: 0,
            gpu_memory_used_mib: None,
            processes: n.processes.clone(),
            driver: n.driver,
            settings: NodeSettings::default(),
            uptime_seconds: 10.0,
            stopping: false,
            gpu_stats: vec![],
            unhealthy: None,
        };
        v.heartbeat(&hb, 1010.0);
    }
    v.sweep(1010.0);
    let s = snapshot(&v, 1010.0);
    let with = |filter: ListingFilter| {
        let (body, total) = s.body(&BodyQuery {
            filter,
            ..query(Listing::Nodes)
        });
        let names = hostnames(&body);
        assert_eq!(names.len(), total);
        names
    };
    assert_eq!(
        with(ListingFilter {
            connected: Some(false),
            ..Default::default()
        }),
        ["cpu2"]
    );
    assert_eq!(
        with(ListingFilter {
            connected: Some(true),
            ..Default::default()
        }),
        ["cpu1", "gpu1", "gpu2"]
    );
    assert_eq!(
        with(ListingFilter {
            driver: Some(Driver::Cuda),
            ..Default::default()
        }),
        ["gpu1", "gpu2"]
    );
    for token in [
        "bbbb2222...",
        "BBBB2222",
        &format!("bbbb2222{}", "0".repeat(56)),
        "team b",
    ] {
        assert_eq!(
            with(ListingFilter {
                token: Some(token.into()),
                ..Default::default()
            }),
            ["cpu2", "gpu2"],
            "token {token}"
        );
    }
    assert!(with(ListingFilter {
        token: Some("cccc3333...".into()),
        ..Default::default()
    })
    .is_empty());
    assert_eq!(
        with(ListingFilter {
            connected: Some(true),
            driver: Some(Driver::Cpu),
            token: Some("aaaa1111...".into()),
        }),
        ["cpu1"]
    );
    // The clients listing holds connected nodes only, filtered the same way.
    let (body, total) = s.body(&BodyQuery {
        filter: ListingFilter {
            token: Some("Team B".into()),
            ..Default::default()
        },
        ..query(Listing::Clients)
    });
    let clients: ClusterClients = serde_json::from_slice(&body).unwrap();
    assert_eq!(total, 1);
    assert_eq!(clients.clients[0].hostname, "gpu2");
    // Totals stay those of every listed node.
    assert_eq!(
        nodes(
            &s.body(&BodyQuery {
                filter: ListingFilter {
                    connected: Some(false),
                    ..Default::default()
                },
                ..query(Listing::Nodes)
            })
            .0
        )
        .master_stats
        .total_nodes,
        4
    );
}

#[test]
fn offset_and_limit_cut_the_matching_entries() {
    let hosts: Vec<String> = (0..10).map(|i| format!("n{i:02}")).collect();
    let v = view(&hosts.iter().map(|h| (h.as_str(), A)).collect::<Vec<_>>());
    let s = snapshot(&v, 1000.0);
    let cut = |offset, limit| {
        let (body, total) = s.body(&BodyQuery {
            offset,
            limit,
            ..query(Listing::Nodes)
        });
        assert_eq!(total, 10);
        hostnames(&body)
    };
    assert_eq!(cut(0, Some(3)), ["n00", "n01", "n02"]);
    assert_eq!(cut(8, Some(3)), ["n08", "n09"]);
    assert_eq!(cut(4, None), hosts[4..].to_vec());
    assert!(cut(10, Some(5)).is_empty());
    assert!(cut(usize::MAX, None).is_empty());
}

#[test]
fn pages_stop_under_the_budget_and_name_the_next_offset() {
    let hosts: Vec<String> = (0..100).map(|i| format!("node{i:03}")).collect();
    let v = view(&hosts.iter().map(|h| (h.as_str(), A)).collect::<Vec<_>>());
    let s = snapshot(&v, 1000.0);
    let mut offset = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = nodes(&s.page(
            Listing::Nodes,
            &ListQuery {
                offset,
                limit: None,
            },
            16 * 1024,
        ));
        assert!(!page.nodes.is_empty());
        pages += 1;
        seen.extend(page.nodes.into_iter().map(|n| n.hostname));
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert!(pages > 2, "{pages} pages");
    assert_eq!(seen, hosts);
    let page = nodes(&s.page(
        Listing::Nodes,
        &ListQuery {
            offset: 95,
            limit: Some(10),
        },
        1 << 20,
    ));
    assert_eq!(page.nodes.len(), 5);
    assert_eq!(page.next_offset, None);
    let page = nodes(&s.page(
        Listing::Nodes,
        &ListQuery {
            offset: 0,
            limit: Some(10),
        },
        1 << 20,
    ));
    assert_eq!((page.nodes.len(), page.next_offset), (10, Some(10)));
}

#[test]
fn heartbeats_that_change_nothing_shown_count_apart_from_changes_shown_at_once() {
    let mut v = view(&[("cpu1", A)]);
    let before = v.revisions();
    let id = crate::tokens::node_id("cpu1", 1);
    let n = v.node(&id).unwrap();
    let mut hb = gantry_contracts::registry::Heartbeat {
        node_id: id.clone(),
        busy_slots: 0,
        gpu_memory_used_mib: None,
        processes: n.processes.clone(),
        driver: n.driver,
        settings: NodeSettings::default(),
        uptime_seconds: 1.0,
        stopping: false,
        gpu_stats: vec![],
        unhealthy: None,
    };
    v.heartbeat(&hb, 1001.0);
    let after = v.revisions();
    assert_eq!(after.prompt, before.prompt);
    assert!(after.any > before.any);
    hb.busy_slots = 1;
    hb.processes = vec![Process {
        status: gantry_contracts::registry::process_status::BUSY,
        ..hb.processes[0].clone()
    }];
    v.heartbeat(&hb, 1002.0);
    assert!(
        v.revisions().prompt > after.prompt,
        "a node taking a job shows at once"
    );
    let before = v.revisions();
    v.register(record("cpu2", A), 1003.0);
    assert!(
        v.revisions().prompt > before.prompt,
        "a node joining shows at once"
    );
}
