//! Prometheus metrics, served as text at `/metrics` beside `/healthz` and `/readyz` (the api's
//! HTTP port, the other services' `GANTRY_HEALTH_ADDR`). Every service gets the NATS endpoint
//! metrics from [`crate::endpoint::serve`]; the api adds its HTTP metrics and each service its own
//! (`gantry_registry_*`, `gantry_trainer_*`), registered here so the names live in one place.
//! Labels carry endpoint names, routes with ids folded to `{id}`, outcomes and codes only: never a
//! user, token or path a user chose.

use std::collections::HashSet;
use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_gauge_vec, register_histogram, register_histogram_vec,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

/// Seconds buckets for request latencies: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `gantry_nats_requests_total{endpoint, outcome}`: requests a NATS service endpoint answered;
/// `outcome` is `ok` or the error code (`not_found`, `conflict`, ...).
pub static NATS_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_nats_requests_total",
        "Requests answered by this service's NATS endpoints, by endpoint and outcome (ok or the error code).",
        &["endpoint", "outcome"]
    )
    .expect("gantry_nats_requests_total registers once")
});

/// `gantry_nats_request_duration_seconds{endpoint}`.
pub static NATS_REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gantry_nats_request_duration_seconds",
        "Time to answer a request on a NATS endpoint.",
        &["endpoint"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("gantry_nats_request_duration_seconds registers once")
});

/// `gantry_http_requests_total{method, route, status}` (api).
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_http_requests_total",
        "HTTP requests answered, by method, route (ids folded to {id}) and status.",
        &["method", "route", "status"]
    )
    .expect("gantry_http_requests_total registers once")
});

/// `gantry_http_request_duration_seconds{method, route}` (api).
pub static HTTP_REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gantry_http_request_duration_seconds",
        "Time to answer an HTTP request (a held training submission counts its hold).",
        &["method", "route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("gantry_http_request_duration_seconds registers once")
});

/// `gantry_registry_nodes{state}`: nodes this registry replica lists, connected or disconnected.
pub static REGISTRY_NODES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gantry_registry_nodes",
        "Nodes this replica lists, by state (connected or disconnected).",
        &["state"]
    )
    .expect("gantry_registry_nodes registers once")
});

/// `gantry_registry_reconciled_total{what}`: what the reconciler settled that nothing else would.
pub static REGISTRY_RECONCILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_registry_reconciled_total",
        "Jobs the reconciler settled, by what it did.",
        &["what"]
    )
    .expect("gantry_registry_reconciled_total registers once")
});

/// `gantry_registry_dead_events_total{type}`: job events given up on and dead-lettered.
pub static REGISTRY_DEAD_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_registry_dead_events_total",
        "Job events this replica gave up on and moved to the dead-letter stream, by type.",
        &["type"]
    )
    .expect("gantry_registry_dead_events_total registers once")
});

/// `gantry_registry_job_events_total{type}`: job events applied (of every replica, each counts its own).
pub static REGISTRY_JOB_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_registry_job_events_total",
        "Job events this replica applied, by type.",
        &["type"]
    )
    .expect("gantry_registry_job_events_total registers once")
});

/// `gantry_registry_jobs_ended_total{status}`: jobs this replica recorded as over (each job is
/// counted once, by the replica whose write ended it).
pub static REGISTRY_JOBS_ENDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_registry_jobs_ended_total",
        "Jobs whose end this replica recorded, by final status (completed, failed, cancelled).",
        &["status"]
    )
    .expect("gantry_registry_jobs_ended_total registers once")
});

/// `gantry_registry_dispatch_seconds`: from a job's record to the first `started` from a node.
pub static REGISTRY_DISPATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "gantry_registry_dispatch_seconds",
        "Time from a job's record to a node's first started event (queue wait and dispatch).",
        vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            3600.0
        ]
    )
    .expect("gantry_registry_dispatch_seconds registers once")
});

/// `gantry_queue_jobs{driver, state}`: training jobs in each driver's queue, `waiting` for a
/// node or `delivered` to one.
pub static QUEUE_JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gantry_queue_jobs",
        "Training jobs in each driver's queue: waiting for a node, or delivered to one.",
        &["driver", "state"]
    )
    .expect("gantry_queue_jobs registers once")
});

/// `gantry_trainer_jobs_running`.
pub static TRAINER_JOBS_RUNNING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gantry_trainer_jobs_running",
        "Jobs this trainer is working on now."
    )
    .expect("gantry_trainer_jobs_running registers once")
});

/// `gantry_trainer_jobs_total{outcome}`: how jobs ended on this trainer.
pub static TRAINER_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_trainer_jobs_total",
        "Jobs that ended on this trainer, by outcome (completed, failed, cancelled, retried, handed_back, skipped).",
        &["outcome"]
    )
    .expect("gantry_trainer_jobs_total registers once")
});

/// `gantry_trainer_samples_per_second`: the training throughput of the latest progress report.
pub static TRAINER_SAMPLES_PER_SECOND: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "gantry_trainer_samples_per_second",
        "Training throughput in the latest progress report of this trainer."
    )
    .expect("gantry_trainer_samples_per_second registers once")
});

/// `gantry_trainer_model_loads_total{outcome}`: model versions an analysis worker fetched and
/// loaded (`loaded`) or could not (`refused`: weights that do not match their card); a cached
/// model is not counted again.
pub static TRAINER_MODEL_LOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_trainer_model_loads_total",
        "Model versions this trainer's analysis workers loaded from the model store, by outcome (loaded, refused).",
        &["outcome"]
    )
    .expect("gantry_trainer_model_loads_total registers once")
});

/// `gantry_trainer_analyzed_images_total{outcome}`: images this trainer's analysis workers
/// classified (`ok`) or refused (`bad_request`, `conflict`, ...).
pub static TRAINER_ANALYZED_IMAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gantry_trainer_analyzed_images_total",
        "Images this trainer's analysis workers classified (ok) or refused, by outcome.",
        &["outcome"]
    )
    .expect("gantry_trainer_analyzed_images_total registers once")
});

/// `gantry_trainer_dataset_cache_bytes`: the dataset cache's size after the latest fetch.
pub static TRAINER_CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gantry_trainer_dataset_cache_bytes",
        "Bytes of dataset snapshots cached on this trainer after the latest fetch."
    )
    .expect("gantry_trainer_dataset_cache_bytes registers once")
});

/// Register the api's metrics, so they are listed before the first request.
pub fn init_api() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_REQUEST_SECONDS);
}

/// Register the registry's metrics.
pub fn init_registry() {
    LazyLock::force(&REGISTRY_NODES);
    LazyLock::force(&REGISTRY_JOB_EVENTS);
    LazyLock::force(&REGISTRY_DEAD_EVENTS);
    LazyLock::force(&REGISTRY_RECONCILED);
    LazyLock::force(&REGISTRY_JOBS_ENDED);
    LazyLock::force(&REGISTRY_DISPATCH_SECONDS);
    LazyLock::force(&QUEUE_JOBS);
}

/// `gantry_gpu_*{node, gpu}`: a trainer's GPUs as its last reading found them (NVML or
/// `rocm-smi`). A figure the driver could not give is left out rather than shown as 0.
pub struct GpuMetrics {
    /// `gantry_gpu_utilization_percent`.
    pub utilization: GaugeVec,
    /// `gantry_gpu_memory_used_bytes`.
    pub memory_used: GaugeVec,
    /// `gantry_gpu_memory_total_bytes`.
    pub memory_total: GaugeVec,
    /// `gantry_gpu_temperature_celsius`.
    pub temperature: GaugeVec,
    /// `gantry_gpu_power_watts`.
    pub power: GaugeVec,
    /// `gantry_gpu_power_limit_watts`.
    pub power_limit: GaugeVec,
    /// `gantry_gpu_ecc_errors{kind}`: ECC errors since the driver loaded, `corrected` or
    /// `uncorrected`.
    pub ecc_errors: GaugeVec,
    /// `gantry_gpu_mig_enabled`: 1 when Multi-Instance GPU mode is on.
    pub mig_enabled: GaugeVec,
    /// `gantry_gpu_healthy`: 0 when the GPU fails the built-in health check.
    pub healthy: GaugeVec,
    /// `gantry_node_healthy{node}`: 0 while the node fails a health check and takes no job.
    pub node_healthy: GaugeVec,
}

/// The trainer's GPU gauges.
pub static GPU: LazyLock<GpuMetrics> = LazyLock::new(|| {
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        register_gauge_vec!(name, help, labels).expect("a GPU gauge registers once")
    };
    let per_gpu = ["node", "gpu"];
    GpuMetrics {
        utilization: gauge("gantry_gpu_utilization_percent", "GPU busy time over the driver's last sample period, percent.", &per_gpu),
        memory_used: gauge("gantry_gpu_memory_used_bytes", "GPU memory in use, bytes.", &per_gpu),
        memory_total: gauge("gantry_gpu_memory_total_bytes", "GPU memory in all, bytes.", &per_gpu),
        temperature: gauge("gantry_gpu_temperature_celsius", "GPU core temperature, degrees Celsius.", &per_gpu),
        power: gauge("gantry_gpu_power_watts", "GPU power draw, watts.", &per_gpu),
        power_limit: gauge("gantry_gpu_power_limit_watts", "GPU enforced power limit, watts.", &per_gpu),
        ecc_errors: gauge("gantry_gpu_ecc_errors", "GPU ECC errors since the driver loaded, by kind (corrected, uncorrected).", &["node", "gpu", "kind"]),
        mig_enabled: gauge("gantry_gpu_mig_enabled", "1 when the GPU runs in Multi-Instance GPU mode.", &per_gpu),
        healthy: gauge("gantry_gpu_healthy", "0 when the GPU fails the built-in health check (lost, or uncorrectable ECC errors).", &per_gpu),
        node_healthy: gauge("gantry_node_healthy", "0 while the node fails a health check (a GPU's or GANTRY_HEALTH_CHECK) and takes no new job.", &["node"]),
    }
});

/// Register the trainer's metrics.
pub fn init_trainer() {
    LazyLock::force(&GPU);
    LazyLock::force(&TRAINER_JOBS_RUNNING);
    LazyLock::force(&TRAINER_JOBS);
    LazyLock::force(&TRAINER_SAMPLES_PER_SECOND);
    LazyLock::force(&TRAINER_CACHE_BYTES);
    LazyLock::force(&TRAINER_MODEL_LOADS);
    LazyLock::force(&TRAINER_ANALYZED_IMAGES);
}

/// The route label of a request path: each segment kept when it is one of `known` (the static
/// segments of the app's routes), else folded to `{id}`; at most eight segments. Ids, names,
/// versions and anything a client made up fold, so the label's values stay few.
pub fn route_label(path: &str, known: &HashSet<String>) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(8).collect();
    if segments.is_empty() {
        return "/".into();
    }
    let folded: Vec<&str> = segments
        .iter()
        .map(|s| if known.contains(*s) { s } else { "{id}" })
        .collect();
    format!("/{}", folded.join("/"))
}

/// The static segments of route templates such as `/admin/api/users/{id}`.
pub fn static_segments<'a>(templates: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    templates
        .into_iter()
        .flat_map(|t| t.split('/'))
        .filter(|s| !s.is_empty() && !s.starts_with('{') && !s.starts_with(':'))
        .map(str::to_owned)
        .collect()
}

/// Every registered metric in Prometheus' text format.
pub fn render() -> String {
    TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"))
}

/// Every metric family Gantry's services can export, by name (whether or not a service has
/// recorded a sample yet).
pub fn family_names() -> std::collections::BTreeSet<String> {
    use prometheus::core::Collector;
    let gpu = &*GPU;
    let collectors: [&dyn Collector; 27] = [
        &*NATS_REQUESTS,
        &*NATS_REQUEST_SECONDS,
        &*HTTP_REQUESTS,
        &*HTTP_REQUEST_SECONDS,
        &*REGISTRY_NODES,
        &*REGISTRY_RECONCILED,
        &*REGISTRY_DEAD_EVENTS,
        &*REGISTRY_JOB_EVENTS,
        &*REGISTRY_JOBS_ENDED,
        &*REGISTRY_DISPATCH_SECONDS,
        &*QUEUE_JOBS,
        &*TRAINER_JOBS_RUNNING,
        &*TRAINER_JOBS,
        &*TRAINER_SAMPLES_PER_SECOND,
        &*TRAINER_CACHE_BYTES,
        &*TRAINER_MODEL_LOADS,
        &*TRAINER_ANALYZED_IMAGES,
        &gpu.utilization,
        &gpu.memory_used,
        &gpu.memory_total,
        &gpu.temperature,
        &gpu.power,
        &gpu.power_limit,
        &gpu.ecc_errors,
        &gpu.mig_enabled,
        &gpu.healthy,
        &gpu.node_healthy,
    ];
    collectors
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| d.fq_name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_asks_only_for_metrics_the_services_export() {
        let exported = family_names();
        let text = include_str!("../../../deploy/observability/grafana/dashboards/gantry.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(text).expect("the dashboard is JSON");
        let mut asked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                for name in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("gantry_"))
                {
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        exported.contains(family),
                        "panel {:?} asks for {name}, which no service exports",
                        panel["title"]
                    );
                    asked += 1;
                }
            }
        }
        assert!(asked >= 15, "the dashboard asks for {asked} series");
    }

    #[test]
    fn routes_keep_known_segments_and_fold_the_rest() {
        let known = static_segments([
            "/admin/api/users/{id}",
            "/admin/api/models/{name}/versions/{version}/download",
            "/healthz",
        ]);
        assert_eq!(
            route_label("/admin/api/users/12", &known),
            "/admin/api/users/{id}"
        );
        assert_eq!(
            route_label("/admin/api/models/MyModel/versions/2/download", &known),
            "/admin/api/models/{id}/versions/{id}/download"
        );
        assert_eq!(route_label("/wp-admin/setup.php", &known), "/{id}/{id}");
        assert_eq!(route_label("/", &known), "/");
        assert_eq!(route_label("/healthz", &known), "/healthz");
        assert_eq!(
            route_label("/a/b/c/d/e/f/g/h/i/j", &known)
                .matches('/')
                .count(),
            8
        );
    }

    #[test]
    fn counters_show_in_the_text_format() {
        NATS_REQUESTS
            .with_label_values(&["test.endpoint", "ok"])
            .inc_by(3);
        let text = render();
        assert!(
            text.contains("# TYPE gantry_nats_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"gantry_nats_requests_total{endpoint="test.endpoint",outcome="ok"} 3"#),
            "{text}"
        );
    }
}
