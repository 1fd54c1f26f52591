//! The response examples of the admin page's listings (`openapi` feature only): the page shows
//! them under "Response", exactly as it always has.

use poem_openapi::types::Example;

use crate::registry::{
    ClusterClient, ClusterClients, ClusterNode, ClusterNodes, ClusterToken, ClusterTokenList,
    Driver, GpuDevice, GpuInfo, GpuStats, MasterStats, Process, ProcessStatus, SetDriverResult,
};

fn gpu_info() -> GpuInfo {
    GpuInfo {
        cuda_available: true,
        rocm_available: false,
        cuda_devices: 1,
        rocm_devices: 0,
        available_backends: vec![Driver::Cuda, Driver::Cpu],
    }
}

impl Example for ClusterToken {
    fn example() -> Self {
        Self {
            id: 1,
            name: "Worker Token".into(),
            token: "abc123...".into(),
            active: true,
            created_at: "2024-01-01T00:00:00Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .expect("a valid timestamp")
                .into(),
        }
    }
}

impl Example for ClusterTokenList {
    fn example() -> Self {
        Self {
            tokens: vec![ClusterToken::example()],
            total: 1,
            limit: 100,
            offset: 0,
        }
    }
}

impl Example for ClusterClients {
    fn example() -> Self {
        Self {
            clients: vec![ClusterClient {
                client_id: "abc123...".into(),
                connected_at: 1640995200.0,
                last_seen: 1640995300.0,
                gpu_info: gpu_info(),
                processes: vec![Process {
                    name: "train_cuda".into(),
                    status: ProcessStatus::Active,
                    weight: 10,
                    model: Some("MyCustomModel".into()),
                    reason: None,
                }],
                hostname: "worker1.example.com".into(),
                connected: true,
            }],
            next_offset: None,
        }
    }
}

impl Example for ClusterNodes {
    fn example() -> Self {
        Self {
            master_stats: MasterStats {
                total_nodes: 3,
                connected_nodes: 2,
                total_workers: 6,
                total_active_jobs: 1,
                total_completed_jobs: 15,
                uptime_seconds: 3600.5,
            },
            nodes: vec![ClusterNode {
                token: "abc123...".into(),
                token_name: "Worker Node 1".into(),
                hostname: "worker1.example.com".into(),
                weight: 100,
                gpus: 1,
                gpu_memory: vec!["CUDA Device 0: 8GB VRAM".into()],
                total_memory: 8,
                workers_available: 2,
                ip_address: "192.168.1.100".into(),
                connected: true,
                last_seen: 1640995300.0,
                uptime_seconds: 1800.5,
                active_jobs: 1,
                completed_jobs: 5,
                client_id: "abc123...".into(),
                workers: 3,
                host_memory_gb: 62.8,
                cpus: 16,
                driver: Driver::Cuda,
                driver_preference: None,
                draining: false,
                gpu_info: gpu_info(),
                gpu_devices: vec![GpuDevice {
                    index: 0,
                    backend: Driver::Cuda,
                    name: "NVIDIA GeForce RTX 3070".into(),
                    memory_total_mib: 8192,
                }],
                driver_version: Some("580.65.06".into()),
                processes: vec![],
                gpu_stats: vec![GpuStats {
                    index: 0,
                    backend: Driver::Cuda,
                    utilization_percent: Some(97.0),
                    memory_used_mib: Some(6144),
                    memory_total_mib: Some(8192),
                    temperature_c: Some(71.0),
                    power_draw_w: Some(201.5),
                    power_limit_w: Some(220.0),
                    ecc_corrected: None,
                    ecc_uncorrected: None,
                    mig_enabled: None,
                    lost: false,
                }],
                unhealthy: None,
            }],
            next_offset: None,
        }
    }
}

impl Example for SetDriverResult {
    fn example() -> Self {
        Self {
            success: true,
            warning: None,
        }
    }
}
