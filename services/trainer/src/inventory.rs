//! What this machine has: CUDA and ROCm devices as libtorch sees them, their names and memory
//! (NVML for NVIDIA, `rocm-smi`/`amd-smi` for AMD), driver versions, host memory and CPUs.
//!
//! No GPU is a normal answer (`available_backends: ["cpu"]`); every probe that fails leaves a
//! note and moves on.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_contracts::registry::{Driver, GpuDevice, GpuInfo, Inventory};
use nvml_wrapper::Nvml;

/// Open NVML (it loads `libnvidia-ml` at run time); `None` on machines without the NVIDIA driver.
pub fn open_nvml() -> Result<Nvml, String> {
    Nvml::init().map_err(|e| e.to_string())
}

/// True when the libtorch in this process is a ROCm (HIP) build: then `tch::Cuda` counts AMD
/// devices. Read from the libraries mapped into the process.
fn libtorch_is_hip() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.contains("libtorch_hip") || maps.contains("libamdhip64"))
        .unwrap_or(false)
}

/// Run a tool with a deadline; its stdout when it exits 0.
pub(crate) fn run_tool(program: &str, args: &[&str], timeout: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = child.wait_with_output().ok()?;
                return status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned());
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// One AMD device from `rocm-smi --showproductname --showmeminfo vram --json`.
#[derive(Debug, PartialEq)]
pub struct RocmCard {
    /// Product name.
    pub name: String,
    /// VRAM in bytes (0 when not shown).
    pub vram_bytes: u64,
}

/// Parse `rocm-smi --showproductname --showmeminfo vram --json`: an object keyed `card0`,
/// `card1`, ... (other keys, like `system`, are skipped).
pub fn parse_rocm_smi(json: &str) -> Vec<RocmCard> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut cards: Vec<(u32, RocmCard)> = map
        .iter()
        .filter_map(|(key, v)| {
            let index: u32 = key.strip_prefix("card")?.parse().ok()?;
            let text = |k: &str| {
                v.get(k)
                    .and_then(|s| s.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            };
            let name = text("Card Series")
                .or_else(|| text("Card series"))
                .or_else(|| text("Card model"))
                .or_else(|| text("Card Model"))
                .unwrap_or("AMD GPU")
                .to_owned();
            let vram_bytes = text("VRAM Total Memory (B)")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Some((index, RocmCard { name, vram_bytes }))
        })
        .collect();
    cards.sort_by_key(|(i, _)| *i);
    cards.into_iter().map(|(_, c)| c).collect()
}

fn rocm_cards(notes: &mut Vec<String>) -> Vec<RocmCard> {
    let timeout = Duration::from_secs(15);
    if let Some(out) = run_tool(
        "rocm-smi",
        &["--showproductname", "--showmeminfo", "vram", "--json"],
        timeout,
    ) {
        return parse_rocm_smi(&out);
    }
    // amd-smi (ROCm 6+): a JSON array, one entry per GPU; names and memory are not parsed.
    if let Some(out) = run_tool("amd-smi", &["list", "--json"], timeout) {
        if let Ok(serde_json::Value::Array(gpus)) = serde_json::from_str(&out) {
            return gpus
                .iter()
                .map(|_| RocmCard {
                    name: "AMD GPU".into(),
                    vram_bytes: 0,
                })
                .collect();
        }
    }
    notes.push("/dev/kfd exists but neither rocm-smi nor amd-smi answered".into());
    Vec::new()
}

fn rocm_driver_version() -> Option<String> {
    let out = run_tool(
        "rocm-smi",
        &["--showdriverversion", "--json"],
        Duration::from_secs(10),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get("system")?
        .get("Driver version")?
        .as_str()
        .map(str::to_owned)
}

fn rocm_version() -> Option<String> {
    std::fs::read_to_string("/opt/rocm/.info/version")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn host(notes: &mut Vec<String>) -> (f64, u32) {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    );
    let gb = sys.total_memory() as f64 / (1024.0 * 1024.0 * 1024.0);
    let mut cpus = sys.cpus().len() as u32;
    if cpus == 0 {
        cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        notes.push("sysinfo could not count CPUs; used the scheduler's count".into());
    }
    ((gb * 10.0).round() / 10.0, cpus)
}

/// Probe everything. Blocking (loads CUDA, may run `rocm-smi`): call it off the async workers.
pub fn detect(nvml: Option<&Nvml>) -> Inventory {
    let mut notes = Vec::new();
    let torch_count = if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as u32
    } else {
        0
    };
    let hip = libtorch_is_hip();
    let mut gpu_info = GpuInfo::default();
    let mut gpus = Vec::new();
    let mut driver_version = None;
    let mut cuda_version = None;
    let mut rocm_version_found = None;

    if hip {
        gpu_info.rocm_devices = torch_count;
        gpu_info.rocm_available = torch_count > 0;
    } else {
        gpu_info.cuda_devices = torch_count;
        gpu_info.cuda_available = torch_count > 0;
    }

    // NVIDIA: names, memory and versions from NVML.
    if let Some(nvml) = nvml {
        driver_version = nvml.sys_driver_version().ok();
        cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let nvml_count = nvml.device_count().unwrap_or(0);
        if !gpu_info.cuda_available && nvml_count > 0 && !hip {
            notes.push(format!(
                "NVML sees {nvml_count} NVIDIA GPU(s) but libtorch sees no CUDA device (a CPU-only libtorch, or torch_cuda not linked)"
            ));
        }
    }
    for index in 0..gpu_info.cuda_devices {
        let (name, memory_total_mib) = nvml
            .and_then(|n| n.device_by_index(index).ok())
            .map(|d| {
                let name = d.name().unwrap_or_else(|_| format!("CUDA device {index}"));
                let mib = d
                    .memory_info()
                    .map(|m| m.total / (1024 * 1024))
                    .unwrap_or(0);
                (name, mib)
            })
            .unwrap_or_else(|| (format!("CUDA device {index}"), 0));
        gpus.push(GpuDevice {
            index,
            backend: Driver::Cuda,
            name,
            memory_total_mib,
        });
    }
    if gpu_info.cuda_available && nvml.is_none() {
        notes.push("NVML unavailable: GPU names and memory are unknown".into());
    }

    // AMD: the ROCm tools, when the kernel driver is there.
    if Path::new("/dev/kfd").exists() {
        let cards = rocm_cards(&mut notes);
        if !hip && !cards.is_empty() {
            gpu_info.rocm_devices = cards.len() as u32;
            notes.push(format!(
                "{} AMD GPU(s) found but this libtorch is not a ROCm build: they cannot train",
                cards.len()
            ));
        }
        if hip {
            for index in 0..gpu_info.rocm_devices {
                let card = cards.get(index as usize);
                gpus.push(GpuDevice {
                    index,
                    backend: Driver::Rocm,
                    name: card
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| format!("ROCm device {index}")),
                    memory_total_mib: card.map(|c| c.vram_bytes / (1024 * 1024)).unwrap_or(0),
                });
            }
            driver_version = driver_version.or_else(rocm_driver_version);
        }
        rocm_version_found = rocm_version();
    } else if hip && torch_count > 0 {
        for index in 0..torch_count {
            gpus.push(GpuDevice {
                index,
                backend: Driver::Rocm,
                name: format!("ROCm device {index}"),
                memory_total_mib: 0,
            });
        }
    }

    if gpu_info.cuda_available {
        gpu_info.available_backends.push(Driver::Cuda);
    }
    if gpu_info.rocm_available {
        gpu_info.available_backends.push(Driver::Rocm);
    }
    gpu_info.available_backends.push(Driver::Cpu);

    let (host_memory_gb, cpus) = host(&mut notes);
    Inventory {
        gpu_info,
        gpus,
        driver_version,
        cuda_version,
        rocm_version: rocm_version_found,
        host_memory_gb,
        cpus,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocm_smi_json_gives_names_and_memory_by_card_order() {
        let json = r#"{
            "card1": {"Card series": "AMD Instinct MI210", "VRAM Total Memory (B)": "68702699520"},
            "card0": {"Card Series": "AMD Instinct MI250X", "Card model": "0x740c", "VRAM Total Memory (B)": "68702699520"},
            "system": {"Driver version": "6.3.6"}
        }"#;
        let cards = parse_rocm_smi(json);
        assert_eq!(cards.len(), 2);
        assert_eq!(cards[0].name, "AMD Instinct MI250X");
        assert_eq!(cards[1].name, "AMD Instinct MI210");
        assert_eq!(cards[0].vram_bytes, 68_702_699_520);
        assert!(parse_rocm_smi("not json").is_empty());
    }

    #[test]
    fn a_machine_without_gpus_offers_the_cpu_and_no_error() {
        let inv = detect(None);
        assert!(inv.gpu_info.available_backends.ends_with(&[Driver::Cpu]));
        assert!(inv.cpus >= 1);
        assert!(inv.host_memory_gb > 0.0);
        if !inv.gpu_info.cuda_available && !inv.gpu_info.rocm_available {
            assert_eq!(inv.gpu_info.available_backends, vec![Driver::Cpu]);
            assert!(inv.gpus.is_empty());
        }
    }
}
