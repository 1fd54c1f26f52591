//! Bounds on what nodes report. Every registration, heartbeat and announcement is checked against
//! these before it touches a registry's memory or its store, so one hostile or broken message
//! cannot make a replica allocate without limit or fill its store.

use super::{GpuDevice, Heartbeat, Inventory, Process, RegisterNode};

/// Most worker slots a node may have.
pub const MAX_WORKERS: u32 = 256;
/// Most GPUs a node may report.
pub const MAX_GPUS: usize = 64;
/// Longest text field a node may send (names, versions, reasons), in bytes.
pub const MAX_TEXT: usize = 256;
/// Most notes an inventory may carry.
pub const MAX_NOTES: usize = 32;
/// Largest registration, heartbeat or announcement read at all, in bytes.
pub const MAX_NODE_MESSAGE: usize = 256 * 1024;

/// `value` of `field` within [`MAX_TEXT`].
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_TEXT {
        return Err(format!("{field} is longer than {MAX_TEXT} bytes"));
    }
    Ok(())
}

/// A count of worker slots, 1 to [`MAX_WORKERS`].
pub fn check_workers(workers: u32) -> Result<(), String> {
    if workers == 0 || workers > MAX_WORKERS {
        return Err(format!("workers must be between 1 and {MAX_WORKERS}"));
    }
    Ok(())
}

/// A payload small enough to decode.
pub fn check_size(what: &str, bytes: usize) -> Result<(), String> {
    if bytes > MAX_NODE_MESSAGE {
        return Err(format!(
            "{what} of {bytes} bytes is over {MAX_NODE_MESSAGE}"
        ));
    }
    Ok(())
}

impl GpuDevice {
    fn check(&self) -> Result<(), String> {
        check_text("a GPU's name", &self.name)
    }
}

impl Inventory {
    /// Within the bounds above.
    pub fn check(&self) -> Result<(), String> {
        if self.gpus.len() > MAX_GPUS {
            return Err(format!("more than {MAX_GPUS} GPUs"));
        }
        self.gpus.iter().try_for_each(GpuDevice::check)?;
        if self.gpu_info.available_backends.len() > 3 {
            return Err("more than three backends".into());
        }
        for (field, value) in [
            ("driver_version", &self.driver_version),
            ("cuda_version", &self.cuda_version),
            ("rocm_version", &self.rocm_version),
        ] {
            check_text(field, value.as_deref().unwrap_or_default())?;
        }
        if self.notes.len() > MAX_NOTES {
            return Err(format!("more than {MAX_NOTES} notes"));
        }
        self.notes.iter().try_for_each(|n| check_text("a note", n))
    }
}

impl Process {
    fn check(&self) -> Result<(), String> {
        check_text("a process name", &self.name)?;
        check_text("a process model", self.model.as_deref().unwrap_or_default())?;
        check_text(
            "a process reason",
            self.reason.as_deref().unwrap_or_default(),
        )
    }
}

impl Heartbeat {
    /// Within the bounds above.
    pub fn check(&self) -> Result<(), String> {
        check_text("node_id", &self.node_id)?;
        // Training slots and analysis workers, each up to MAX_WORKERS.
        if self.busy_slots > MAX_WORKERS || self.processes.len() > 2 * MAX_WORKERS as usize {
            return Err(format!("more than {MAX_WORKERS} workers"));
        }
        if self.gpu_stats.len() > MAX_GPUS {
            return Err(format!("more than {MAX_GPUS} GPUs"));
        }
        check_text("unhealthy", self.unhealthy.as_deref().unwrap_or_default())?;
        self.processes.iter().try_for_each(Process::check)
    }
}

impl RegisterNode {
    /// Within the bounds above (the token is checked against the store, not here).
    pub fn check(&self) -> Result<(), String> {
        check_workers(self.workers)?;
        if self.analysis_workers > MAX_WORKERS {
            return Err(format!("analysis_workers must be at most {MAX_WORKERS}"));
        }
        check_text("token", &self.token)?;
        check_text("hostname", &self.hostname)?;
        check_text("ip_address", &self.ip_address)?;
        check_text("version", &self.version)?;
        self.inventory.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Driver, GpuInfo};

    fn register() -> RegisterNode {
        RegisterNode {
            token: "gct_x".into(),
            hostname: "gpu-1".into(),
            ip_address: "10.0.0.1".into(),
            weight: 100,
            workers: 2,
            analysis_workers: 1,
            inventory: Inventory {
                gpu_info: GpuInfo {
                    available_backends: vec![Driver::Cpu],
                    ..Default::default()
                },
                cpus: 8,
                ..Default::default()
            },
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn an_ordinary_registration_passes() {
        assert_eq!(register().check(), Ok(()));
    }

    #[test]
    fn workers_gpus_and_texts_past_their_bounds_are_refused() {
        let mut r = register();
        r.workers = 4_000_000_000;
        assert!(r.check().unwrap_err().contains("workers"));
        let mut r = register();
        r.analysis_workers = MAX_WORKERS + 1;
        assert!(r.check().unwrap_err().contains("analysis_workers"));
        let mut r = register();
        r.hostname = "h".repeat(MAX_TEXT + 1);
        assert!(r.check().unwrap_err().contains("hostname"));
        let mut r = register();
        r.inventory.gpus = vec![
            GpuDevice {
                index: 0,
                backend: Driver::Cuda,
                name: "g".into(),
                memory_total_mib: 1,
            };
            MAX_GPUS + 1
        ];
        assert!(r.check().unwrap_err().contains("GPUs"));
        let mut r = register();
        r.inventory.notes = vec!["n".into(); MAX_NOTES + 1];
        assert!(r.check().is_err());
    }

    #[test]
    fn a_heartbeat_with_more_processes_than_workers_allow_is_refused() {
        let hb: Heartbeat = serde_json::from_value(serde_json::json!({
            "node_id": "n", "busy_slots": 0, "processes": [], "driver": "cpu",
            "uptime_seconds": 1.0,
        }))
        .unwrap();
        assert_eq!(hb.check(), Ok(()));
        let hb = Heartbeat {
            busy_slots: MAX_WORKERS + 1,
            ..hb
        };
        assert!(hb.check().is_err());
    }

    #[test]
    fn an_oversized_payload_is_refused_before_decoding() {
        assert!(check_size("a heartbeat", MAX_NODE_MESSAGE).is_ok());
        assert!(check_size("a heartbeat", MAX_NODE_MESSAGE + 1).is_err());
    }
}
