//! How a node's GPUs are doing now: [`GpuStats`], read by the trainer through NVML (NVIDIA) or
//! `rocm-smi` (AMD) every heartbeat, and the built-in health check on it ([`GpuStats::failure`]).

use serde::{Deserialize, Serialize};

use super::Driver;

/// One GPU's live figures. A figure the driver cannot give (an older GPU, a driver call that
/// failed or took too long) is null rather than 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "GpuStatsOut"))]
pub struct GpuStats {
    /// Index, as in `gpu_devices`.
    pub index: u32,
    /// `cuda` or `rocm`.
    pub backend: Driver,
    /// Busy time over the last sample period, percent.
    pub utilization_percent: Option<f64>,
    /// Memory in use, MiB.
    pub memory_used_mib: Option<u64>,
    /// Memory in all, MiB.
    pub memory_total_mib: Option<u64>,
    /// Core temperature, degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Power draw, watts.
    pub power_draw_w: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_w: Option<f64>,
    /// Corrected ECC errors since the driver loaded.
    pub ecc_corrected: Option<u64>,
    /// Uncorrectable ECC errors since the driver loaded: any at all fails the health check.
    pub ecc_uncorrected: Option<u64>,
    /// Multi-Instance GPU mode is on.
    pub mig_enabled: Option<bool>,
    /// The driver says the GPU is gone (fallen off the bus, reset needed): fails the health
    /// check.
    #[serde(default)]
    pub lost: bool,
}

impl GpuStats {
    /// Nothing known yet about GPU `index`.
    pub fn unknown(index: u32, backend: Driver) -> Self {
        Self {
            index,
            backend,
            utilization_percent: None,
            memory_used_mib: None,
            memory_total_mib: None,
            temperature_c: None,
            power_draw_w: None,
            power_limit_w: None,
            ecc_corrected: None,
            ecc_uncorrected: None,
            mig_enabled: None,
            lost: false,
        }
    }

    /// Why this GPU fails the built-in health check, or `None` when it passes: a GPU the driver
    /// lost, or any uncorrectable ECC error (its memory can no longer be trusted).
    pub fn failure(&self) -> Option<String> {
        let which = format!(
            "{} GPU {}",
            self.backend.as_str().to_uppercase(),
            self.index
        );
        if self.lost {
            return Some(format!(
                "{which} is lost (fallen off the bus or needs a reset)"
            ));
        }
        match self.ecc_uncorrected {
            Some(n) if n > 0 => Some(format!("{which} has {n} uncorrectable ECC errors")),
            _ => None,
        }
    }
}

/// The first failure among `gpus`, with how many fail, for a node's health.
pub fn gpus_failure(gpus: &[GpuStats]) -> Option<String> {
    let failures: Vec<String> = gpus.iter().filter_map(GpuStats::failure).collect();
    match failures.len() {
        0 => None,
        1 => Some(failures[0].clone()),
        n => Some(format!("{} (and {} more GPUs)", failures[0], n - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_fails_its_health_check_when_lost_or_with_uncorrectable_ecc_errors_only() {
        let mut g = GpuStats::unknown(1, Driver::Cuda);
        assert_eq!(g.failure(), None, "nothing known is no failure");
        g.ecc_corrected = Some(40);
        g.ecc_uncorrected = Some(0);
        assert_eq!(
            g.failure(),
            None,
            "corrected errors are the ECC doing its job"
        );
        g.ecc_uncorrected = Some(2);
        assert_eq!(
            g.failure().as_deref(),
            Some("CUDA GPU 1 has 2 uncorrectable ECC errors")
        );
        g.lost = true;
        assert!(g.failure().unwrap().contains("is lost"));
        let ok = GpuStats::unknown(0, Driver::Cuda);
        assert_eq!(gpus_failure(std::slice::from_ref(&ok)), None);
        assert_eq!(
            gpus_failure(&[ok, g.clone(), g]).unwrap(),
            "CUDA GPU 1 is lost (fallen off the bus or needs a reset) (and 1 more GPUs)"
        );
    }
}
