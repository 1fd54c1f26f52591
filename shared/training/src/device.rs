//! From a job's driver (`cuda`, `rocm`, `cpu`, `any`) to a `tch::Device`.
//!
//! ROCm builds of libtorch present AMD GPUs through the CUDA device type, so `tch` cannot tell
//! the two apart by itself. Which one this process runs is read from the libraries it has loaded
//! (`libtorch_hip.so` or `libtorch_cuda.so` in `/proc/self/maps`), which follows the libtorch
//! found at run time rather than the one the binary was built against.

use tch::{Cuda, Device};

/// The GPU runtime of the libtorch this process loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuRuntime {
    /// NVIDIA CUDA with at least one usable device.
    Cuda,
    /// AMD ROCm (HIP) with at least one usable device.
    Rocm,
    /// No usable GPU: CPU-only libtorch, no device, no driver, or `torch_cuda` not linked (see
    /// LINKING.md).
    None,
}

/// Why a driver cannot be served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of `cuda`, `rocm`, `cpu`, `any`.
    #[error("unknown driver `{0}`; expected cuda, rocm, cpu or any")]
    UnknownDriver(String),
    /// The driver names a GPU runtime this node does not have.
    #[error("driver `{wanted}` is not available on this node (GPU runtime: {found:?})")]
    Unavailable {
        /// The driver asked for.
        wanted: String,
        /// What the node has.
        found: GpuRuntime,
    },
}

/// The GPU runtime available to this process.
pub fn gpu_runtime() -> GpuRuntime {
    if !Cuda::is_available() {
        return GpuRuntime::None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if maps.contains("libtorch_hip") {
        GpuRuntime::Rocm
    } else {
        GpuRuntime::Cuda
    }
}

/// Drivers this node can serve, best first: `cuda` or `rocm` when a GPU is usable, then `cpu`.
/// (`any` is always servable and not listed.)
pub fn available_drivers() -> Vec<&'static str> {
    match gpu_runtime() {
        GpuRuntime::Cuda => vec!["cuda", "cpu"],
        GpuRuntime::Rocm => vec!["rocm", "cpu"],
        GpuRuntime::None => vec!["cpu"],
    }
}

/// The device for a job's driver: `cuda` and `rocm` need that runtime (first GPU), `cpu` is the
/// CPU, `any` is the GPU when there is one and the CPU otherwise. Case-insensitive.
pub fn pick_device(driver: &str) -> Result<Device, DeviceError> {
    let driver = driver.trim().to_ascii_lowercase();
    let runtime = || gpu_runtime();
    match driver.as_str() {
        "cpu" => Ok(Device::Cpu),
        "any" => Ok(if runtime() == GpuRuntime::None {
            Device::Cpu
        } else {
            Device::Cuda(0)
        }),
        "cuda" | "rocm" => {
            let found = runtime();
            let wanted = if driver == "cuda" {
                GpuRuntime::Cuda
            } else {
                GpuRuntime::Rocm
            };
            if found == wanted {
                Ok(Device::Cuda(0))
            } else {
                Err(DeviceError::Unavailable {
                    wanted: driver,
                    found,
                })
            }
        }
        _ => Err(DeviceError::UnknownDriver(driver)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_any_always_resolve() {
        assert_eq!(pick_device("cpu"), Ok(Device::Cpu));
        assert!(pick_device("ANY").is_ok());
        assert!(matches!(
            pick_device("tpu"),
            Err(DeviceError::UnknownDriver(_))
        ));
        assert!(available_drivers().contains(&"cpu"));
    }
}
