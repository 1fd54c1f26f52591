//! How this node's GPUs are doing, and whether the node is fit to take jobs.
//!
//! [`Monitor::run`] reads every GPU's live figures ([`GpuStats`]) each heartbeat interval:
//! through NVML on NVIDIA machines, through `rocm-smi` on AMD ones. Each reading runs on a
//! blocking thread under a deadline, so a slow or hung driver never holds up a heartbeat: the
//! heartbeat always sends the latest reading it has. It also runs the operator's own check
//! (`GANTRY_HEALTH_CHECK`, every `GANTRY_HEALTH_CHECK_INTERVAL`), the way cluster schedulers
//! run a node health check script.
//!
//! A node fails its health check when a GPU does ([`GpuStats::failure`]: lost, or uncorrectable
//! ECC errors) or when the operator's check exits non-zero. It then takes no new job (a job it
//! runs finishes), its idle workers are `unavailable` saying why, and the queue's waiting reason
//! says its nodes are unhealthy. It takes jobs again once the checks pass.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use gantry_contracts::registry::{gpus_failure, Driver, GpuDevice, GpuStats, MAX_TEXT};
use gantry_runtime::metrics::GPU;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The node's health as last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Each GPU's figures.
    pub gpus: Vec<GpuStats>,
    /// Why the node fails its health check; `None` when it passes.
    pub unhealthy: Option<String>,
}

/// What the monitor reads, and how often.
pub struct Monitor {
    /// NVML, when the machine has an NVIDIA driver.
    pub nvml: Option<Arc<Nvml>>,
    /// The GPUs the inventory found.
    pub gpus: Vec<GpuDevice>,
    /// The node name, for the metrics' `node` label.
    pub node: String,
    /// How often the GPUs are read (the heartbeat interval).
    pub every: Duration,
    /// `GANTRY_HEALTH_CHECK`.
    pub command: Option<String>,
    /// `GANTRY_HEALTH_CHECK_INTERVAL`.
    pub command_every: Duration,
    /// How long the operator's check may run before it fails (and is killed).
    pub command_limit: Duration,
}

/// How long the operator's check may run: [`Monitor::command_limit`]'s usual value.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);

impl Monitor {
    /// Read until `shutdown`, publishing each reading on the returned channel. The first
    /// reading is taken before this returns, so a node never joins before its first check.
    pub async fn start(self, shutdown: CancellationToken) -> watch::Receiver<Health> {
        let this = Arc::new(self);
        let mut reader = Reader::default();
        let mut command_result = this.run_command().await;
        let first = this.read_gpus(&mut reader).await.unwrap_or_default();
        let first = this.judge(first, &reader, command_result.clone());
        log_change(None, &first);
        let (tx, rx) = watch::channel(first);
        let monitor = this.clone();
        tokio::spawn(async move {
            let mut gpus_tick = tokio::time::interval(monitor.every);
            gpus_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut command_tick = tokio::time::interval(monitor.command_every);
            command_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            gpus_tick.tick().await;
            command_tick.tick().await;
            loop {
                // The GPUs on their tick, the operator's check on its own; either re-judges.
                let gpus = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = gpus_tick.tick() => monitor.read_gpus(&mut reader).await,
                    _ = command_tick.tick() => {
                        command_result = monitor.run_command().await;
                        None
                    }
                };
                // A reading that did not come (in time) keeps the last one's figures.
                let gpus = gpus.unwrap_or_else(|| tx.borrow().gpus.clone());
                let health = monitor.judge(gpus, &reader, command_result.clone());
                tx.send_if_modified(|old| {
                    log_change(old.unhealthy.as_deref(), &health);
                    let changed = *old != health;
                    *old = health;
                    changed
                });
            }
        });
        rx
    }

    /// The node's health from a GPU reading, the driver's answering and the operator's check;
    /// updates the metrics.
    fn judge(&self, gpus: Vec<GpuStats>, reader: &Reader, command: Option<String>) -> Health {
        let stalled = (reader.unanswered >= STALLED_READINGS).then(|| {
            format!(
                "the GPU driver has not answered {} readings in a row",
                reader.unanswered
            )
        });
        let unhealthy = gpus_failure(&gpus).or(stalled).or(command);
        export(&self.node, &gpus, unhealthy.is_none());
        Health { gpus, unhealthy }
    }

    /// One reading of every GPU, or `None` when the driver did not answer within the interval.
    /// At most one reading is in flight: a driver call that hangs is waited on again at the next
    /// tick rather than joined by another one.
    async fn read_gpus(&self, reader: &mut Reader) -> Option<Vec<GpuStats>> {
        if self.gpus.is_empty() {
            return Some(Vec::new());
        }
        let mut reading = reader.pending.take().unwrap_or_else(|| {
            let nvml = self.nvml.clone();
            let gpus = self.gpus.clone();
            tokio::task::spawn_blocking(move || read(nvml.as_deref(), &gpus))
        });
        match tokio::time::timeout(self.every.max(Duration::from_secs(1)), &mut reading).await {
            Ok(Ok(stats)) => {
                reader.unanswered = 0;
                Some(stats)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the GPUs failed");
                None
            }
            Err(_) => {
                reader.unanswered += 1;
                reader.pending = Some(reading);
                tracing::warn!(
                    unanswered = reader.unanswered,
                    "the GPU driver did not answer in time; keeping the last reading"
                );
                None
            }
        }
    }

    /// Run the operator's check: `None` when it passes (or there is none), else why it failed.
    /// It runs in a process group of its own, all of which is killed when it overruns.
    async fn run_command(&self) -> Option<String> {
        let command = self.command.as_deref()?;
        let child = tokio::process::Command::new("sh")
            .args(["-c", command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return Some(format!("GANTRY_HEALTH_CHECK could not start: {e}")),
        };
        let group = child.id();
        match tokio::time::timeout(self.command_limit, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => None,
            Ok(Ok(out)) => Some(command_failure(&out.stdout, &out.stderr, out.status)),
            Ok(Err(e)) => Some(format!("GANTRY_HEALTH_CHECK failed to run: {e}")),
            Err(_) => {
                if let Some(pgid) = group {
                    // SAFETY: a plain signal to the process group this check started.
                    unsafe {
                        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
                    }
                }
                Some(format!(
                    "GANTRY_HEALTH_CHECK did not finish within {}s",
                    self.command_limit.as_secs_f64()
                ))
            }
        }
    }
}

/// Readings in a row the driver must leave unanswered before the node fails its health check.
const STALLED_READINGS: u32 = 3;

/// The state of reading the GPUs across ticks.
#[derive(Default)]
struct Reader {
    /// A reading still running from an earlier tick.
    pending: Option<tokio::task::JoinHandle<Vec<GpuStats>>>,
    /// Readings in a row that did not answer in time.
    unanswered: u32,
}

/// Say so when the node starts or stops failing its health check.
fn log_change(before: Option<&str>, now: &Health) {
    match (before, now.unhealthy.as_deref()) {
        (a, Some(why)) if a != Some(why) => {
            tracing::warn!(reason = %why, "this node fails its health check; it takes no new job")
        }
        (Some(_), None) => tracing::info!("this node passes its health check again"),
        _ => {}
    }
}

/// Why a check failed: the first non-empty line it printed (stdout, else stderr), bounded, or its
/// exit status.
fn command_failure(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    let first_line = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    let mut why = first_line(stdout)
        .or_else(|| first_line(stderr))
        .unwrap_or_else(|| format!("GANTRY_HEALTH_CHECK exited with {status}"));
    // Within what a heartbeat may carry, with room for the process reason's prefix.
    let limit = MAX_TEXT - 64;
    if why.len() > limit {
        let mut cut = limit;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
    }
    why
}

/// Read every GPU: NVIDIA ones through NVML, AMD ones through `rocm-smi`. Blocking.
pub fn read(nvml: Option<&Nvml>, gpus: &[GpuDevice]) -> Vec<GpuStats> {
    let rocm = if gpus.iter().any(|g| g.backend == Driver::Rocm) {
        crate::inventory::run_tool(
            "rocm-smi",
            &[
                "--showuse",
                "--showtemp",
                "--showpower",
                "--showmaxpower",
                "--showmeminfo",
                "vram",
                "--json",
            ],
            Duration::from_secs(10),
        )
        .map(|json| parse_rocm_smi_stats(&json))
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    gpus.iter()
        .map(|g| match g.backend {
            Driver::Cuda => nvml.map_or_else(
                || GpuStats::unknown(g.index, Driver::Cuda),
                |n| read_nvml(n, g.index),
            ),
            _ => rocm
                .iter()
                .find(|s| s.index == g.index)
                .cloned()
                .unwrap_or_else(|| GpuStats::unknown(g.index, g.backend)),
        })
        .collect()
}

/// One NVIDIA GPU through NVML. A figure the GPU does not support stays `None`; a GPU the
/// driver reports lost is marked so.
fn read_nvml(nvml: &Nvml, index: u32) -> GpuStats {
    let mut stats = GpuStats::unknown(index, Driver::Cuda);
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(NvmlError::GpuLost) => {
            stats.lost = true;
            return stats;
        }
        Err(_) => return stats,
    };
    let mut lost = false;
    stats.utilization_percent =
        figure(device.utilization_rates(), &mut lost).map(|u| f64::from(u.gpu));
    if let Some(m) = figure(device.memory_info(), &mut lost) {
        stats.memory_used_mib = Some(m.used / (1024 * 1024));
        stats.memory_total_mib = Some(m.total / (1024 * 1024));
    }
    stats.temperature_c =
        figure(device.temperature(TemperatureSensor::Gpu), &mut lost).map(f64::from);
    stats.power_draw_w = figure(device.power_usage(), &mut lost).map(|mw| f64::from(mw) / 1000.0);
    stats.power_limit_w =
        figure(device.enforced_power_limit(), &mut lost).map(|mw| f64::from(mw) / 1000.0);
    stats.ecc_corrected = figure(
        device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        &mut lost,
    );
    stats.ecc_uncorrected = figure(
        device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        &mut lost,
    );
    stats.mig_enabled = figure(device.mig_mode(), &mut lost).map(|m| m.current == 1);
    stats.lost = lost;
    stats
}

/// A figure NVML gave, or `None`; notes when the answer was that the GPU is lost.
fn figure<T>(r: Result<T, NvmlError>, lost: &mut bool) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(NvmlError::GpuLost) => {
            *lost = true;
            None
        }
        Err(_) => None,
    }
}

/// Parse `rocm-smi --showuse --showtemp --showpower --showmaxpower --showmeminfo vram --json`:
/// an object keyed `card0`, `card1`, ... whose values are strings.
pub fn parse_rocm_smi_stats(json: &str) -> Vec<GpuStats> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out: Vec<GpuStats> = map
        .iter()
        .filter_map(|(key, v)| {
            let index: u32 = key.strip_prefix("card")?.parse().ok()?;
            let num = |keys: &[&str]| {
                keys.iter().find_map(|k| {
                    v.get(*k)
                        .and_then(|s| s.as_str())
                        .and_then(|s| s.trim().parse::<f64>().ok())
                })
            };
            let mut s = GpuStats::unknown(index, Driver::Rocm);
            s.utilization_percent = num(&["GPU use (%)"]);
            s.temperature_c = num(&[
                "Temperature (Sensor edge) (C)",
                "Temperature (Sensor junction) (C)",
            ]);
            s.power_draw_w = num(&[
                "Current Socket Graphics Package Power (W)",
                "Average Graphics Package Power (W)",
            ]);
            s.power_limit_w = num(&["Max Graphics Package Power (W)"]);
            s.memory_total_mib = num(&["VRAM Total Memory (B)"]).map(|b| b as u64 / (1024 * 1024));
            s.memory_used_mib =
                num(&["VRAM Total Used Memory (B)"]).map(|b| b as u64 / (1024 * 1024));
            Some(s)
        })
        .collect();
    out.sort_by_key(|s| s.index);
    out
}

/// Set the `gantry_gpu_*` and `gantry_node_healthy` gauges from a reading.
fn export(node: &str, gpus: &[GpuStats], healthy: bool) {
    GPU.node_healthy
        .with_label_values(&[node])
        .set(if healthy { 1.0 } else { 0.0 });
    for g in gpus {
        let gpu = g.index.to_string();
        let labels = [node, gpu.as_str()];
        let set = |vec: &prometheus::GaugeVec, value: Option<f64>| match value {
            Some(v) => vec.with_label_values(&labels).set(v),
            None => {
                let _ = vec.remove_label_values(&labels);
            }
        };
        set(&GPU.utilization, g.utilization_percent);
        set(
            &GPU.memory_used,
            g.memory_used_mib.map(|m| (m * 1024 * 1024) as f64),
        );
        set(
            &GPU.memory_total,
            g.memory_total_mib.map(|m| (m * 1024 * 1024) as f64),
        );
        set(&GPU.temperature, g.temperature_c);
        set(&GPU.power, g.power_draw_w);
        set(&GPU.power_limit, g.power_limit_w);
        set(
            &GPU.mig_enabled,
            g.mig_enabled.map(|m| if m { 1.0 } else { 0.0 }),
        );
        GPU.healthy
            .with_label_values(&labels)
            .set(if g.failure().is_none() { 1.0 } else { 0.0 });
        for (kind, count) in [
            ("corrected", g.ecc_corrected),
            ("uncorrected", g.ecc_uncorrected),
        ] {
            let labels = [node, gpu.as_str(), kind];
            match count {
                Some(n) => GPU.ecc_errors.with_label_values(&labels).set(n as f64),
                None => {
                    let _ = GPU.ecc_errors.remove_label_values(&labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocm_smi_figures_are_read_by_card_and_missing_ones_stay_unknown() {
        let json = r#"{
            "card1": {"GPU use (%)": "12", "Temperature (Sensor edge) (C)": "45.0",
                      "Average Graphics Package Power (W)": "88.0", "Max Graphics Package Power (W)": "300.0",
                      "VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "1073741824"},
            "card0": {"GPU use (%)": "N/A"},
            "system": {"Driver version": "6.8"}
        }"#;
        let stats = parse_rocm_smi_stats(json);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].index, 0);
        assert_eq!(stats[0].utilization_percent, None);
        assert_eq!(stats[1].utilization_percent, Some(12.0));
        assert_eq!(stats[1].temperature_c, Some(45.0));
        assert_eq!(stats[1].power_draw_w, Some(88.0));
        assert_eq!(stats[1].power_limit_w, Some(300.0));
        assert_eq!(stats[1].memory_total_mib, Some(65520));
        assert_eq!(stats[1].memory_used_mib, Some(1024));
        assert!(parse_rocm_smi_stats("not json").is_empty());
    }

    #[test]
    fn a_failed_check_says_its_first_line_bounded_or_its_exit_status() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            command_failure(b"\n  disk /scratch is full \nmore", b"", status),
            "disk /scratch is full"
        );
        assert_eq!(
            command_failure(b"", b"xid 79 seen\n", status),
            "xid 79 seen"
        );
        assert!(command_failure(b"", b"", status).contains("exited with"));
        assert!(command_failure("é".repeat(400).as_bytes(), b"", status).len() <= MAX_TEXT - 64);
    }

    #[tokio::test]
    async fn the_operators_check_passes_fails_and_times_out() {
        let monitor = |command: &str, limit: f64| Monitor {
            nvml: None,
            gpus: Vec::new(),
            node: "n".into(),
            every: Duration::from_secs(1),
            command: Some(command.into()),
            command_every: Duration::from_secs(60),
            command_limit: Duration::from_secs_f64(limit),
        };
        assert_eq!(monitor("true", 5.0).run_command().await, None);
        assert_eq!(
            monitor("echo 'GPU 3: XID 48'; exit 1", 5.0)
                .run_command()
                .await
                .as_deref(),
            Some("GPU 3: XID 48")
        );
        // Overrunning: the whole group is killed, the shell's children too.
        let started = std::time::Instant::now();
        let slow = monitor("sleep 30 & sleep 30; wait", 0.3)
            .run_command()
            .await
            .unwrap();
        assert!(slow.contains("did not finish"), "{slow}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
