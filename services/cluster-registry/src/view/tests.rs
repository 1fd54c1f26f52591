//! Tests of the in-memory view: every clock is passed in, so nothing sleeps.

use super::*;
use gantry_contracts::registry::{GpuInfo, Inventory};

const T: Timing = Timing {
    interval: 5.0,
    misses: 3,
    retention: 3600.0,
};

fn record(id: &str, host: &str, token_id: i64) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        hostname: host.into(),
        token_id,
        token_name: "t".into(),
        token_prefix: "abcd1234".into(),
        ip_address: "10.0.0.1".into(),
        weight: 100,
        workers: 2,
        analysis_workers: 0,
        inventory: Inventory {
            gpu_info: GpuInfo {
                available_backends: vec![Driver::Cpu],
                ..Default::default()
            },
            host_memory_gb: 16.0,
            cpus: 8,
            ..Default::default()
        },
        version: "0.1.0".into(),
        registered_at: 0.0,
        settings: NodeSettings::default(),
        completed_jobs: 0,
    }
}

fn beat(view: &View, id: &str) -> Heartbeat {
    let node = view.node(id).unwrap();
    Heartbeat {
        node_id: id.into(),
        busy_slots: 0,
        gpu_memory_used_mib: None,
        processes: node.processes.clone(),
        driver: node.driver,
        settings: node.record.settings.clone(),
        uptime_seconds: 1.0,
        stopping: false,
        gpu_stats: Vec::new(),
        unhealthy: None,
    }
}

#[test]
fn a_registered_node_is_listed_connected_with_one_process_per_worker() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    let (stats, nodes) = v.cluster_nodes(100.0, 5.0);
    assert_eq!(stats.total_nodes, 1);
    assert_eq!(stats.connected_nodes, 1);
    assert_eq!(stats.total_workers, 2);
    assert_eq!(nodes[0].processes.len(), 2);
    assert_eq!(nodes[0].processes[0].name, "train_cpu");
    assert_eq!(nodes[0].workers_available, 2);
    assert_eq!(nodes[0].token, "abcd1234...");
    assert_eq!(v.cluster_clients(100.0).len(), 1);
}

#[test]
fn a_node_that_just_joined_lists_its_analysis_workers_before_its_first_heartbeat() {
    let mut v = View::new(T);
    let mut r = record("n1", "a", 1);
    r.analysis_workers = 1;
    v.register(r, 100.0);
    let (_, nodes) = v.cluster_nodes(100.0, 5.0);
    let names: Vec<_> = nodes[0].processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["train_cpu", "train_cpu", "analysis_cpu"]);
    assert_eq!(
        nodes[0].workers_available, 2,
        "analysis workers are not job slots"
    );

    // Joining again with another count re-plans them.
    let mut r = record("n1", "a", 1);
    r.analysis_workers = 3;
    v.register(r, 101.0);
    assert_eq!(v.node("n1").unwrap().processes.len(), 5);
}

#[test]
fn a_silent_node_disconnects_after_the_missed_heartbeats_and_returns_with_a_beat() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    assert_eq!(v.sweep(114.9), 0, "still within 3 x 5 s");
    assert_eq!(v.sweep(115.1), 1);
    assert!(!v.node("n1").unwrap().connected);
    assert!(v.cluster_clients(116.0).is_empty());
    let (_, nodes) = v.cluster_nodes(116.0, 16.0);
    assert!(!nodes[0].connected);
    assert_eq!(nodes[0].workers_available, 0);

    let hb = beat(&v, "n1");
    assert_eq!(v.heartbeat(&hb, 130.0), HeartbeatOutcome::Applied(None));
    let n = v.node("n1").unwrap();
    assert!(n.connected);
    assert_eq!(n.connected_at, 130.0);
}

#[test]
fn a_disconnected_node_is_forgotten_after_the_retention() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    v.sweep(120.0);
    v.take_dirty();
    v.sweep(100.0 + 3599.0);
    assert_eq!(v.len(), 1);
    v.sweep(100.0 + 3601.0);
    assert!(v.is_empty());
}

#[test]
fn a_node_behind_on_its_settings_is_sent_the_stored_ones_at_most_once_per_interval() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    let newer = NodeSettings {
        driver_preference: Some(Driver::Cuda),
        draining: false,
        settings_version: 2,
    };
    v.apply_settings("n1", &newer);
    let mut hb = beat(&v, "n1");
    hb.settings = NodeSettings::default();
    assert_eq!(
        v.heartbeat(&hb, 101.0),
        HeartbeatOutcome::Applied(Some(NodeControl::Settings(newer.clone())))
    );
    assert_eq!(v.heartbeat(&hb, 102.0), HeartbeatOutcome::Applied(None));
    assert!(matches!(
        v.heartbeat(&hb, 106.5),
        HeartbeatOutcome::Applied(Some(_))
    ));
}

#[test]
fn a_replica_that_missed_a_change_adopts_the_nodes_newer_settings() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    let mut hb = beat(&v, "n1");
    hb.settings = NodeSettings {
        driver_preference: None,
        draining: true,
        settings_version: 4,
    };
    assert_eq!(v.heartbeat(&hb, 101.0), HeartbeatOutcome::Applied(None));
    assert!(v.node("n1").unwrap().record.settings.draining);
    // An older announcement arriving late changes nothing.
    v.apply_settings(
        "n1",
        &NodeSettings {
            settings_version: 3,
            ..Default::default()
        },
    );
    assert!(v.node("n1").unwrap().record.settings.draining);
}

#[test]
fn a_revoked_tokens_nodes_are_disconnected_and_told_to_leave_when_they_beat() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    v.register(record("n2", "b", 2), 100.0);
    assert_eq!(v.revoke_token(1), vec!["n1".to_owned()]);
    assert!(!v.node("n1").unwrap().connected);
    assert!(v.node("n2").unwrap().connected);
    let hb = beat(&v, "n1");
    assert!(matches!(
        v.heartbeat(&hb, 101.0),
        HeartbeatOutcome::Revoked(Some(NodeControl::Leave { .. }))
    ));
    assert_eq!(v.heartbeat(&hb, 101.5), HeartbeatOutcome::Revoked(None));
    assert!(!v.node("n1").unwrap().connected);
}

#[test]
fn a_stopping_node_disconnects_at_once() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    let mut hb = beat(&v, "n1");
    hb.stopping = true;
    v.heartbeat(&hb, 101.0);
    assert!(!v.node("n1").unwrap().connected);
}

#[test]
fn a_registration_heard_back_after_the_node_stopped_leaves_it_disconnected() {
    let mut v = View::new(T);
    let mut rec = record("n1", "a", 1);
    rec.registered_at = 100.0;
    v.register(rec.clone(), 100.0);
    let mut hb = beat(&v, "n1");
    hb.stopping = true;
    v.heartbeat(&hb, 100.5);
    // The announcement of that same registration arrives late.
    v.register_announced(rec.clone(), 100.6);
    assert!(!v.node("n1").unwrap().connected);
    // A newer registration (on another replica) reconnects it.
    rec.registered_at = 101.0;
    v.register_announced(rec, 101.1);
    assert!(v.node("n1").unwrap().connected);
}

#[test]
fn restored_nodes_keep_their_state_and_get_a_full_expiry_period() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    v.register(record("n2", "b", 1), 100.0);
    v.sweep(100.0);
    let mut docs = v.take_dirty();
    docs.iter_mut()
        .find(|d| d.node_id == "n2")
        .unwrap()
        .connected = false;
    let mut rec = record("n1", "a", 1);
    rec.settings.driver_preference = Some(Driver::Rocm);
    rec.completed_jobs = 7;
    let tokens = vec![];
    let mut w = View::new(T);
    w.restore(&tokens, vec![rec, record("n2", "b", 1)], docs, 200.0);
    let n1 = w.node("n1").unwrap();
    assert!(n1.connected);
    assert_eq!(n1.last_seen, 100.0);
    assert_eq!(n1.record.completed_jobs, 7);
    assert_eq!(n1.record.settings.driver_preference, Some(Driver::Rocm));
    assert!(
        !w.node("n2").unwrap().connected,
        "recently disconnected stays listed, disconnected"
    );
    assert_eq!(w.sweep(214.0), 0);
    assert_eq!(w.sweep(215.5), 1);
}

#[test]
fn only_changed_nodes_are_flushed_and_idle_ones_every_thirty_seconds() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    assert_eq!(v.take_dirty().len(), 1);
    let hb = beat(&v, "n1");
    v.heartbeat(&hb, 105.0);
    assert!(v.take_dirty().is_empty());
    v.heartbeat(&hb, 131.0);
    assert_eq!(v.take_dirty().len(), 1);
}

#[test]
fn an_unsettled_view_never_says_no_node() {
    let v = View::new(T);
    assert_eq!(
        v.waiting_reason(JobDriver::Cuda, false),
        Some(WaitingReason::Settling)
    );
    assert_eq!(
        v.waiting_reason(JobDriver::Cuda, true),
        Some(WaitingReason::NoNode {
            driver: JobDriver::Cuda
        })
    );
}

#[test]
fn a_connected_cpu_node_takes_cpu_and_any_jobs_but_not_cuda_ones() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    assert_eq!(v.waiting_reason(JobDriver::Cpu, true), None);
    assert_eq!(v.waiting_reason(JobDriver::Any, true), None);
    assert_eq!(
        v.waiting_reason(JobDriver::Cuda, true),
        Some(WaitingReason::NoNode {
            driver: JobDriver::Cuda
        })
    );
}

#[test]
fn a_drained_node_serves_no_driver() {
    let mut v = View::new(T);
    let mut r = record("n1", "a", 1);
    r.settings.draining = true;
    v.register(r, 100.0);
    assert_eq!(
        v.waiting_reason(JobDriver::Cpu, true),
        Some(WaitingReason::Drained {
            driver: JobDriver::Cpu
        }),
        "the job waits for the undrain, saying so"
    );
    assert!(matches!(
        v.waiting_reason(JobDriver::Cuda, true),
        Some(WaitingReason::NoNode { .. })
    ));
}

#[test]
fn nodes_failing_their_health_check_make_a_job_wait_for_them_and_are_listed_with_why() {
    let mut v = View::new(T);
    v.register(record("n1", "a", 1), 100.0);
    let mut hb = beat(&v, "n1");
    hb.unhealthy = Some("CUDA GPU 0 has 2 uncorrectable ECC errors".into());
    v.heartbeat(&hb, 101.0);
    // They may recover: not "no node", which would give the job up.
    assert_eq!(
        v.waiting_reason(JobDriver::Cpu, true),
        Some(WaitingReason::Unhealthy {
            driver: JobDriver::Cpu
        })
    );
    let (_, nodes) = v.cluster_nodes(101.0, 5.0);
    assert_eq!(
        nodes[0].unhealthy.as_deref(),
        Some("CUDA GPU 0 has 2 uncorrectable ECC errors")
    );
    // A healthy node beside it serves the driver.
    v.register(record("n2", "b", 1), 101.0);
    assert_eq!(v.waiting_reason(JobDriver::Cpu, true), None);
    // Healthy again.
    hb.unhealthy = None;
    v.heartbeat(&hb, 102.0);
    let (_, nodes) = v.cluster_nodes(102.0, 5.0);
    assert!(nodes.iter().all(|n| n.unhealthy.is_none()));
}
