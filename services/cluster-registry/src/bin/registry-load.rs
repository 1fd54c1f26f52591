//! Load check for one registry: register N simulated nodes over NATS, then publish their
//! heartbeats spread evenly over the interval for a while, and report the registry process's CPU
//! and memory (from /proc) and the latency of full `nodes.list` listings (every page).
//!
//! With `--api-url`, also the listing as operators get it: full `GET /api/admin/cluster_nodes`
//! through the api, one at a time (latency) and from several clients at once (throughput),
//! against a baseline measured in the same run: the same bytes served from memory by the same
//! HTTP stack (`listing-baseline`, at `--baseline-url`).
//!
//! Run through `bench/registry_load.sh`, which starts NATS, the store and a release registry
//! (and, with `--http`, auth, the api and the baseline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use gantry_contracts::registry::{
    plan_processes, ClusterNodes, ClusterToken, CreateClusterToken, Driver, Empty, GpuDevice,
    GpuInfo, Heartbeat, Inventory, ListQuery, NodeSettings, RegisterNode, Registered,
};
use gantry_contracts::subjects;
use gantry_runtime::nats::request;

#[derive(Parser)]
#[command(about = "Simulate many trainer nodes heartbeating against one registry")]
struct Args {
    /// NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The registry's process id (for CPU and memory).
    #[arg(long)]
    registry_pid: u32,
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Seconds between one node's heartbeats.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Seconds of heartbeating before measuring (lets the first state flush settle).
    #[arg(long, default_value_t = 15.0)]
    warmup: f64,
    /// Seconds of measuring.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds between two `nodes.list` listings while measuring.
    #[arg(long, default_value_t = 0.5)]
    list_every: f64,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The api, to measure `GET /api/admin/cluster_nodes` through it.
    #[arg(long)]
    api_url: Option<String>,
    /// The admin's API token, for `--api-url`.
    #[arg(long, env = "GANTRY_ADMIN_API_TOKEN", default_value = "")]
    admin_token: String,
    /// `listing-baseline`: the same bytes from memory over the same HTTP stack.
    #[arg(long)]
    baseline_url: Option<String>,
    /// HTTP clients at once in the throughput phases.
    #[arg(long, default_value_t = 4)]
    http_clients: usize,
    /// Seconds of each throughput phase.
    #[arg(long, default_value_t = 10.0)]
    http_duration: f64,
}

fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn inventory(i: usize) -> Inventory {
    // A mix like a real fleet: most nodes with one or two GPUs, some CPU-only.
    let gpus = match i % 4 {
        0 => 0,
        1 | 2 => 1,
        _ => 2,
    };
    let devices: Vec<GpuDevice> = (0..gpus)
        .map(|index| GpuDevice {
            index,
            backend: Driver::Cuda,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total_mib: 81559,
        })
        .collect();
    let mut backends = Vec::new();
    if gpus > 0 {
        backends.push(Driver::Cuda);
    }
    backends.push(Driver::Cpu);
    Inventory {
        gpu_info: GpuInfo {
            cuda_available: gpus > 0,
            rocm_available: false,
            cuda_devices: gpus,
            rocm_devices: 0,
            available_backends: backends,
        },
        gpus: devices,
        driver_version: (gpus > 0).then(|| "580.65.06".into()),
        cuda_version: (gpus > 0).then(|| "13.0".into()),
        rocm_version: None,
        host_memory_gb: 503.7,
        cpus: 64,
        notes: vec![],
    }
}

/// A full listing as the api does it: every page.
async fn list_all(client: &async_nats::Client) -> anyhow::Result<ClusterNodes> {
    let subject = subjects::registry(subjects::registry::NODES);
    let all: ClusterNodes = gantry_contracts::registry::all_pages(|q: ListQuery| {
        let subject = subject.clone();
        async move { request(client, subject, &q).await }
    })
    .await?;
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(args.nats_url.as_str())
        .await?;
    let token: ClusterToken = request(
        &client,
        subjects::registry(subjects::registry::TOKENS_CREATE),
        &CreateClusterToken {
            name: "load".into(),
        },
    )
    .await?;

    // Register every node.
    let started = Instant::now();
    let register = subjects::registry(subjects::registry::REGISTER);
    let registered: Vec<(usize, Registered)> = futures::stream::iter(0..args.nodes)
        .map(|i| {
            let client = client.clone();
            let subject = register.clone();
            let req = RegisterNode {
                token: token.token.clone(),
                hostname: format!("load-{i:05}.example.com"),
                ip_address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                weight: 100,
                workers: 2,
                analysis_workers: 0,
                inventory: inventory(i),
                version: "load".into(),
            };
            async move {
                let r: Registered = request(&client, subject, &req)
                    .await
                    .map_err(|e| anyhow::anyhow!("register {i}: {e}"))?;
                Ok::<_, anyhow::Error>((i, r))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let reg_secs = started.elapsed().as_secs_f64();
    println!(
        "registered {} nodes in {:.1} s ({:.0}/s)",
        registered.len(),
        reg_secs,
        registered.len() as f64 / reg_secs
    );

    // Prepare each node's heartbeat once; only the uptime changes.
    let beats: Arc<Vec<(String, Heartbeat)>> = Arc::new(
        registered
            .iter()
            .map(|(i, r)| {
                let inv = inventory(*i);
                let settings = NodeSettings::default();
                let (driver, processes) =
                    plan_processes(&inv.gpu_info, &settings, &[None, None], None);
                let hb = Heartbeat {
                    node_id: r.node_id.clone(),
                    busy_slots: 0,
                    gpu_memory_used_mib: (!inv.gpus.is_empty()).then_some(1024),
                    processes,
                    driver,
                    settings,
                    uptime_seconds: 0.0,
                    stopping: false,
                    gpu_stats: Vec::new(),
                    unhealthy: None,
                };
                (subjects::node_heartbeat(&r.node_id), hb)
            })
            .collect(),
    );

    // Heartbeats, spread evenly: every 10 ms, the nodes whose slot in the interval has come.
    let stop = tokio_util::sync::CancellationToken::new();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let client = client.clone();
        let beats = beats.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        let interval = args.interval;
        tokio::spawn(async move {
            let n = beats.len();
            let t0 = Instant::now();
            let mut next = 0usize; // beats sent so far, over all periods
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.is_cancelled() {
                tick.tick().await;
                let due = (t0.elapsed().as_secs_f64() / interval * n as f64) as usize;
                while next < due {
                    let (subject, hb) = &beats[next % n];
                    let mut hb = hb.clone();
                    hb.uptime_seconds = t0.elapsed().as_secs_f64();
                    let payload = serde_json::to_vec(&hb).expect("encode heartbeat");
                    if client
                        .publish(subject.clone(), payload.into())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    next += 1;
                }
                sent.store(next as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };

    println!(
        "heartbeating every {} s; warming up for {} s",
        args.interval, args.warmup
    );
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    let hz = clock_ticks();
    let cpu0 = proc_cpu_ticks(args.registry_pid)?;
    let sent0 = sent.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let mut last: Option<ClusterNodes> = None;
    while t0.elapsed().as_secs_f64() < args.duration {
        let q = Instant::now();
        let listing = list_all(&client).await?;
        latencies.push(q.elapsed().as_secs_f64() * 1000.0);
        last = Some(listing);
        let spent = q.elapsed().as_secs_f64();
        if spent < args.list_every {
            tokio::time::sleep(Duration::from_secs_f64(args.list_every - spent)).await;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = proc_cpu_ticks(args.registry_pid)?;
    let sent1 = sent.load(std::sync::atomic::Ordering::Relaxed);

    // How many pages one listing takes.
    let first: ClusterNodes = request(
        &client,
        subjects::registry(subjects::registry::NODES),
        &Empty {},
    )
    .await?;
    let pages = if first.next_offset.is_none() {
        1
    } else {
        (args.nodes + first.nodes.len() - 1) / first.nodes.len().max(1)
    };
    let bytes = serde_json::to_vec(last.as_ref().expect("one listing"))
        .map(|v| v.len())
        .unwrap_or(0);

    let http = match &args.api_url {
        Some(url) => Some(measure_http(&args, url, hz).await?),
        None => None,
    };
    stop.cancel();
    let _ = publisher.await;

    latencies.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let cpu_pct = (cpu1 - cpu0) as f64 / hz / elapsed * 100.0;
    let stats = &last.as_ref().expect("one listing").master_stats;
    println!();
    println!(
        "== registry under {} nodes, heartbeat every {} s ==",
        args.nodes, args.interval
    );
    println!("heartbeats/s      {:.0}", (sent1 - sent0) as f64 / elapsed);
    println!(
        "connected nodes   {} of {} listed",
        stats.connected_nodes, stats.total_nodes
    );
    println!(
        "registry CPU      {:.1} % of one core (over {:.0} s)",
        cpu_pct, elapsed
    );
    println!(
        "registry memory   RSS {:.1} MiB, peak {:.1} MiB",
        proc_status_kb(args.registry_pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
        proc_status_kb(args.registry_pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "nodes.list        {} listings of {} nodes, {} page(s), {:.1} MiB JSON each",
        latencies.len(),
        args.nodes,
        pages,
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "nodes.list ms     p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(h) = &http {
        h.print(&args);
    }
    if stats.connected_nodes as usize != args.nodes {
        anyhow::bail!(
            "only {} of {} nodes are connected",
            stats.connected_nodes,
            args.nodes
        );
    }
    Ok(())
}

/// What the HTTP phases measured.
struct HttpFigures {
    latencies: Vec<f64>,
    bytes: usize,
    gzip_bytes: usize,
    cpu_latency: f64,
    api: Throughput,
    cpu_throughput: f64,
    baseline: Option<Throughput>,
}

/// Requests answered by several clients at once.
struct Throughput {
    requests: u64,
    bytes: u64,
    seconds: f64,
    latencies: Vec<f64>,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

impl HttpFigures {
    fn print(&self, args: &Args) {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        println!();
        println!(
            "== GET /api/admin/cluster_nodes through the api, {} nodes heartbeating ==",
            args.nodes
        );
        println!(
            "listing           {:.1} MiB JSON, {:.2} MiB gzipped",
            mib(self.bytes as f64),
            mib(self.gzip_bytes as f64)
        );
        let l = &self.latencies;
        println!(
            "one at a time ms  p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  ({} listings, every {} s)",
            percentile(l, 50.0),
            percentile(l, 95.0),
            percentile(l, 99.0),
            l.last().copied().unwrap_or(f64::NAN),
            l.len(),
            args.list_every
        );
        println!(
            "registry CPU      {:.1} % of one core meanwhile",
            self.cpu_latency
        );
        let show = |name: &str, t: &Throughput| {
            println!(
                "{name:<17} {:.1} listings/s, {:.0} MiB/s, {} clients: p50 {:.1} ms, p99 {:.1} ms",
                t.per_second(),
                mib(t.bytes as f64) / t.seconds,
                args.http_clients,
                percentile(&t.latencies, 50.0),
                percentile(&t.latencies, 99.0)
            )
        };
        show("api", &self.api);
        println!(
            "registry CPU      {:.1} % of one core meanwhile",
            self.cpu_throughput
        );
        if let Some(b) = &self.baseline {
            show("baseline", b);
            println!(
                "api / baseline    {:.2} of the throughput of the same bytes from memory",
                self.api.per_second() / b.per_second()
            );
            // The rows bench/run.sh tabulates.
            println!(
                "ROW\tcluster_nodes listings/s over HTTP ({} nodes, {} clients), same bytes from memory\t{:.1}\t{:.1}\t{:.2}",
                args.nodes,
                args.http_clients,
                self.api.per_second(),
                b.per_second(),
                self.api.per_second() / b.per_second()
            );
            println!(
                "ROW\tcluster_nodes p99 ms, one listing at a time ({} nodes; the goal is under 50)\t{:.1}\t-\t-",
                args.nodes,
                percentile(l, 99.0)
            );
        }
    }
}

async fn get_listing(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    gzip: bool,
) -> anyhow::Result<bytes::Bytes> {
    let mut req = http.get(url).bearer_auth(token);
    if gzip {
        req = req.header("Accept-Encoding", "gzip");
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        anyhow::bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

/// `clients` clients asking `url` without pause for `seconds`.
async fn throughput(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Throughput> {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let (mut n, mut bytes, mut lat) = (0u64, 0u64, Vec::new());
                while t0.elapsed().as_secs_f64() < seconds {
                    let q = Instant::now();
                    bytes += get_listing(&http, &url, &token, false).await?.len() as u64;
                    lat.push(q.elapsed().as_secs_f64() * 1000.0);
                    n += 1;
                }
                Ok::<_, anyhow::Error>((n, bytes, lat))
            })
        })
        .collect();
    let mut out = Throughput {
        requests: 0,
        bytes: 0,
        seconds: 0.0,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (n, bytes, lat) = t.await??;
        out.requests += n;
        out.bytes += bytes;
        out.latencies.extend(lat);
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out.latencies
        .sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Ok(out)
}

/// The HTTP phases: one listing at a time for `--duration`, then `--http-clients` at once
/// against the api and against the baseline, `--http-duration` each; the registry's CPU over the
/// first two.
async fn measure_http(args: &Args, api: &str, hz: f64) -> anyhow::Result<HttpFigures> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("{}/api/admin/cluster_nodes", api.trim_end_matches('/'));
    let token = args.admin_token.as_str();
    let first = get_listing(&http, &url, token, false).await?;
    let gzip_bytes = get_listing(&http, &url, token, true).await?.len();

    let cpu0 = proc_cpu_ticks(args.registry_pid)?;
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    while t0.elapsed().as_secs_f64() < args.duration {
        let q = Instant::now();
        get_listing(&http, &url, token, false).await?;
        latencies.push(q.elapsed().as_secs_f64() * 1000.0);
        let spent = q.elapsed().as_secs_f64();
        if spent < args.list_every {
            tokio::time::sleep(Duration::from_secs_f64(args.list_every - spent)).await;
        }
    }
    let cpu_latency =
        (proc_cpu_ticks(args.registry_pid)? - cpu0) as f64 / hz / t0.elapsed().as_secs_f64()
            * 100.0;
    latencies.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));

    let cpu0 = proc_cpu_ticks(args.registry_pid)?;
    let t0 = Instant::now();
    let api_figures = throughput(&http, &url, token, args.http_clients, args.http_duration).await?;
    let cpu_throughput =
        (proc_cpu_ticks(args.registry_pid)? - cpu0) as f64 / hz / t0.elapsed().as_secs_f64()
            * 100.0;

    let baseline = match &args.baseline_url {
        Some(b) => {
            let b = format!("{}/body", b.trim_end_matches('/'));
            let stored = http.put(&b).body(first.clone()).send().await?;
            anyhow::ensure!(
                stored.status().is_success(),
                "baseline: {}",
                stored.status()
            );
            Some(throughput(&http, &b, "", args.http_clients, args.http_duration).await?)
        }
        None => None,
    };
    Ok(HttpFigures {
        latencies,
        bytes: first.len(),
        gzip_bytes,
        cpu_latency,
        api: api_figures,
        cpu_throughput,
        baseline,
    })
}
