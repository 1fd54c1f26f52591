//! A node's workers: [`Process`] as the listings show them, [`ProcessStatus`], and
//! [`plan_processes`], which decides them from what a node has and the admin's settings.

use serde::{Deserialize, Serialize};

use super::{Driver, GpuInfo, NodeSettings};

/// One worker of a node.
// As the page's `processes` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ProcessOut"))]
pub struct Process {
    /// `train_cuda`, `train_rocm` or `train_cpu`.
    // `train_<backend>` for a training slot, `analysis_<backend>` for an analysis worker (whose
    // `model` is the `name@version` it has loaded).
    pub name: String,
    /// `active` (ready), `busy`, `draining` or `unavailable`.
    // `unavailable`: see `reason`.
    pub status: ProcessStatus,
    /// Per-worker weight.
    // Default [`DEFAULT_PROCESS_WEIGHT`].
    pub weight: u32,
    /// The model it is working on, or null.
    pub model: Option<String>,
    /// Why it is unavailable.
    // E.g. the chosen driver's backend is missing on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub reason: Option<String>,
}

/// What a worker is doing ([`Process::status`]). Documented as a plain `string` in the OpenAPI
/// document, as the admin page always has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessStatus {
    /// Ready for work.
    Active,
    /// Working on a job.
    Busy,
    /// The node is drained: finishing what it runs, taking nothing new.
    Draining,
    /// Cannot work: its backend is missing (see [`Process::reason`]).
    Unavailable,
}

impl ProcessStatus {
    /// `active`, `busy`, `draining` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessStatus::Active => "active",
            ProcessStatus::Busy => "busy",
            ProcessStatus::Draining => "draining",
            ProcessStatus::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ProcessStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name prefix of training slots: `train_<backend>`.
pub const TRAIN_PREFIX: &str = "train_";
/// The name prefix of analysis workers: `analysis_<backend>`.
pub const ANALYSIS_PREFIX: &str = "analysis_";

impl Process {
    /// A training slot (`train_<backend>`): what jobs wait for.
    pub fn is_training(&self) -> bool {
        self.name.starts_with(TRAIN_PREFIX)
    }

    /// An analysis worker (`analysis_<backend>`).
    pub fn is_analysis(&self) -> bool {
        self.name.starts_with(ANALYSIS_PREFIX)
    }

    /// An analysis worker that can take a request now or soon (`active` or `busy`).
    pub fn serves_analysis(&self) -> bool {
        self.is_analysis() && matches!(self.status, ProcessStatus::Active | ProcessStatus::Busy)
    }
}

/// The values of [`ProcessStatus`] under their old constant names, for callers that compare
/// `p.status == process_status::BUSY`.
pub mod process_status {
    use super::ProcessStatus;

    /// Ready for work.
    pub const ACTIVE: ProcessStatus = ProcessStatus::Active;
    /// Working on a job.
    pub const BUSY: ProcessStatus = ProcessStatus::Busy;
    /// The node is drained: finishing what it runs, taking nothing new.
    pub const DRAINING: ProcessStatus = ProcessStatus::Draining;
    /// Cannot work: its backend is missing.
    pub const UNAVAILABLE: ProcessStatus = ProcessStatus::Unavailable;
}

/// What a node's workers do under `settings`, given what it has: the backend they run on and one
/// [`Process`] per worker. `busy` holds, per worker, the model it is training (`Some`) or `None`
/// when idle. The trainer reports this; the registry shows it for a node that has just joined and
/// not yet sent a heartbeat.
///
/// - A preferred backend the node lacks makes every worker `unavailable`, with the reason.
/// - A node failing its health check (`unhealthy`, the reason) takes nothing new: its idle
///   workers are `unavailable` saying why; a busy one finishes its job.
/// - Drained workers are `draining` (a busy one keeps its model: it finishes it).
/// - Otherwise a worker is `busy` with its model, or `active` (ready).
pub fn plan_processes(
    gpu_info: &GpuInfo,
    settings: &NodeSettings,
    busy: &[Option<String>],
    unhealthy: Option<&str>,
) -> (Driver, Vec<Process>) {
    let (driver, missing) = backend(gpu_info, settings);
    let processes = busy
        .iter()
        .map(|model| {
            let (status, reason) = match (&missing, settings.draining, model) {
                (Some(r), _, _) => (process_status::UNAVAILABLE, Some(r.clone())),
                (None, _, None) if unhealthy.is_some() => {
                    (process_status::UNAVAILABLE, unhealthy.map(health_reason))
                }
                (None, true, _) => (process_status::DRAINING, None),
                (None, false, Some(_)) => (process_status::BUSY, None),
                (None, false, None) => (process_status::ACTIVE, None),
            };
            Process {
                name: format!("{TRAIN_PREFIX}{driver}"),
                status,
                weight: DEFAULT_PROCESS_WEIGHT,
                model: model.clone(),
                reason,
            }
        })
        .collect();
    (driver, processes)
}

/// The backend a node's workers run on under `settings`, and why they cannot when the chosen one
/// is missing.
fn backend(gpu_info: &GpuInfo, settings: &NodeSettings) -> (Driver, Option<String>) {
    match settings.driver_preference {
        Some(d) if gpu_info.has(d) => (d, None),
        Some(d) => (
            d,
            Some(format!(
                "driver {d} was chosen but this node has no {d} backend (it has: {})",
                gpu_info.backends_list()
            )),
        ),
        None => (gpu_info.best(), None),
    }
}

/// One analysis worker as the node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalysisSlot {
    /// Classifying images now.
    pub busy: bool,
    /// The `name@version` it served last, while that model is still loaded.
    pub model: Option<String>,
}

/// A node's analysis workers as `processes` lists them (`analysis_<backend>`), under the same
/// rules as [`plan_processes`]: a missing backend or a failed health check makes an idle worker
/// `unavailable` with the reason, a drained node's workers are `draining`, otherwise `busy` or
/// `active`. Each names the model it has loaded.
pub fn plan_analysis_processes(
    gpu_info: &GpuInfo,
    settings: &NodeSettings,
    slots: &[AnalysisSlot],
    unhealthy: Option<&str>,
) -> Vec<Process> {
    let (driver, missing) = backend(gpu_info, settings);
    slots
        .iter()
        .map(|slot| {
            let (status, reason) = match (&missing, settings.draining, slot.busy) {
                (Some(r), _, _) => (process_status::UNAVAILABLE, Some(r.clone())),
                (None, _, false) if unhealthy.is_some() => {
                    (process_status::UNAVAILABLE, unhealthy.map(health_reason))
                }
                (None, true, _) => (process_status::DRAINING, None),
                (None, false, true) => (process_status::BUSY, None),
                (None, false, false) => (process_status::ACTIVE, None),
            };
            Process {
                name: format!("{ANALYSIS_PREFIX}{driver}"),
                status,
                weight: DEFAULT_PROCESS_WEIGHT,
                model: slot.model.clone(),
                reason,
            }
        })
        .collect()
}

/// A process's `reason` on a node that fails its health check.
pub fn health_reason(why: &str) -> String {
    format!("the node failed its health check: {why}")
}

/// A worker's weight in the listings.
pub const DEFAULT_PROCESS_WEIGHT: u32 = 10;

eq_wire_name!(ProcessStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_a_reason_has_the_pages_four_fields() {
        let p = Process {
            name: "train_cpu".into(),
            status: ProcessStatus::Active,
            weight: 10,
            model: None,
            reason: None,
        };
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "train_cpu", "status": "active", "weight": 10, "model": null})
        );
    }

    #[test]
    fn a_missing_preferred_backend_makes_every_worker_unavailable_with_a_reason() {
        let cpu = GpuInfo {
            available_backends: vec![Driver::Cpu],
            ..Default::default()
        };
        let settings = NodeSettings {
            driver_preference: Some(Driver::Cuda),
            ..Default::default()
        };
        let (driver, procs) = plan_processes(&cpu, &settings, &[None, None], None);
        assert_eq!(driver, Driver::Cuda);
        assert_eq!(procs.len(), 2);
        assert!(procs
            .iter()
            .all(|p| p.status == ProcessStatus::Unavailable && p.name == "train_cuda"));
        assert!(procs[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("no cuda backend"));
    }

    #[test]
    fn an_unhealthy_node_takes_nothing_new_and_says_why_while_a_busy_worker_finishes() {
        let cpu = GpuInfo {
            available_backends: vec![Driver::Cpu],
            ..Default::default()
        };
        let settings = NodeSettings::default();
        let why = Some("CUDA GPU 0 has 3 uncorrectable ECC errors");
        let (_, procs) = plan_processes(&cpu, &settings, &[Some("m".into()), None], why);
        assert_eq!(procs[0].status, ProcessStatus::Busy);
        assert_eq!(procs[1].status, ProcessStatus::Unavailable);
        assert_eq!(
            procs[1].reason.as_deref(),
            Some("the node failed its health check: CUDA GPU 0 has 3 uncorrectable ECC errors")
        );
    }

    #[test]
    fn analysis_workers_are_listed_in_the_pages_shape_with_the_model_they_hold() {
        let cuda = GpuInfo {
            available_backends: vec![Driver::Cuda, Driver::Cpu],
            ..Default::default()
        };
        let slots = [
            AnalysisSlot {
                busy: false,
                model: Some("Shapes@2".into()),
            },
            AnalysisSlot::default(),
        ];
        let procs = plan_analysis_processes(&cuda, &NodeSettings::default(), &slots, None);
        assert_eq!(
            serde_json::to_value(&procs[0]).unwrap(),
            serde_json::json!({"name": "analysis_cuda", "status": "active", "weight": 10, "model": "Shapes@2"})
        );
        assert!(procs[0].is_analysis() && !procs[0].is_training() && procs[0].serves_analysis());
        assert_eq!(procs[1].model, None);
        let unhealthy = plan_analysis_processes(&cuda, &NodeSettings::default(), &slots, Some("x"));
        assert!(unhealthy.iter().all(|p| !p.serves_analysis()));
    }

    #[test]
    fn drained_workers_show_draining_and_busy_ones_keep_their_model() {
        let cpu = GpuInfo {
            available_backends: vec![Driver::Cpu],
            ..Default::default()
        };
        let mut settings = NodeSettings::default();
        let (_, procs) = plan_processes(&cpu, &settings, &[Some("m".into()), None], None);
        assert_eq!(procs[0].status, ProcessStatus::Busy);
        assert_eq!(procs[1].status, ProcessStatus::Active);
        settings.draining = true;
        let (_, procs) = plan_processes(&cpu, &settings, &[Some("m".into()), None], None);
        assert!(procs.iter().all(|p| p.status == ProcessStatus::Draining));
        assert_eq!(procs[0].model.as_deref(), Some("m"));
    }
}
