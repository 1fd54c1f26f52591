//! Configuration from the environment, defined in one place. Each service reads what it needs;
//! a bad value is an error naming the variable, and the service exits non-zero.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// A variable held a value we cannot use.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// What it held (secrets are never echoed: they read `<redacted>`).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Every variable of DESIGN's configuration list. Services ignore the ones they don't use.
#[derive(Debug, Clone)]
pub struct Config {
    /// `GANTRY_HTTP_ADDR`: the api's listen address (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    /// `GANTRY_PUBLIC_URL`: the address users reach, for cookies and same-origin checks.
    pub public_url: Option<String>,
    /// `GANTRY_TRUSTED_PROXIES`: comma-separated addresses of the proxies in front of the api
    /// (an ingress); a request from one of them is attributed to the address its
    /// `X-Forwarded-For` names (default: none, so the TCP peer counts).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `GANTRY_HEALTH_ADDR`: health server of non-api services (default: an ephemeral port).
    pub health_addr: SocketAddr,
    /// `NATS_URL` (default `nats://127.0.0.1:4222`).
    pub nats_url: String,
    /// `GANTRY_NATS_NKEY_FILE`: the nkey seed this service's role connects with (api, auth,
    /// registry). Trainers connect with their cluster token instead.
    pub nats_nkey_file: Option<PathBuf>,
    /// `GANTRY_NATS_CA_FILE`: the CA certificate the NATS server's certificate is checked
    /// against; when set, the connection must be TLS.
    pub nats_ca_file: Option<PathBuf>,
    /// `GANTRY_NATS_CERT_FILE` and `GANTRY_NATS_KEY_FILE`: a client certificate and its key, for
    /// servers that verify clients.
    pub nats_client_cert: Option<(PathBuf, PathBuf)>,
    /// `GANTRY_CALLOUT_ISSUER_FILE`: the account nkey seed the registry signs the users of
    /// admitted nodes with (the server's `auth_callout.issuer`). Unset: no callout is served.
    pub callout_issuer_file: Option<PathBuf>,
    /// `GANTRY_NATS_SYSTEM_NKEY_FILE`: the registry's system-account nkey seed, to disconnect
    /// the nodes of a revoked cluster token.
    pub nats_system_nkey_file: Option<PathBuf>,
    /// `GANTRY_NODE_SESSION` seconds a node's bus credentials last before it must present its
    /// cluster token again (default 3600).
    pub node_session: Duration,
    /// `MONGODB_URI` (default `mongodb://127.0.0.1:27017`).
    pub mongodb_uri: String,
    /// `GANTRY_DB_PREFIX` (default `gantry_`): database names are `<prefix><service>`.
    pub db_prefix: String,
    /// `GANTRY_DATA_ROOT` (default `./data`): browse root and datasets.
    pub data_root: PathBuf,
    /// `GANTRY_DATASETS_PATH` (default `/`, the whole root): the folder under the data root
    /// whose sub-folders `GET /api/datasets` lists, and the only one users may train on.
    pub datasets_path: String,
    /// `GANTRY_ADMIN_USER` (default `admin`).
    pub admin_user: String,
    /// `GANTRY_ADMIN_PASSWORD`: generated and printed once when unset and no admin exists.
    pub admin_password: Option<SecretString>,
    /// `GANTRY_ADMIN_EMAIL` (default `admin@localhost`).
    pub admin_email: String,
    /// `GANTRY_ADMIN_API_TOKEN`: the first admin's API token, exactly as given (32+ characters).
    pub admin_api_token: Option<SecretString>,
    /// `GANTRY_CLUSTER_TOKEN`: the token a trainer joins with.
    pub cluster_token: Option<SecretString>,
    /// `GANTRY_NODE_NAME` (default: the hostname).
    pub node_name: Option<String>,
    /// `GANTRY_NODE_WEIGHT` (default 100).
    pub node_weight: u32,
    /// `GANTRY_WORKERS` (default 1).
    pub workers: u32,
    /// `GANTRY_ANALYSIS_WORKERS`: a trainer's analysis workers, requests it classifies at once
    /// (default 1; 0 serves none).
    pub analysis_workers: u32,
    /// `GANTRY_ANALYSIS_CACHE_MB`: the memory a trainer's loaded models may take, on the GPU
    /// when there is one (default 2048); least recently used models are dropped beyond it.
    pub analysis_cache_mb: f64,
    /// `GANTRY_ANALYZE_PRICE`: credit tokens a user pays per analysed image (default 0; admins
    /// pay nothing).
    pub analyze_price: i64,
    /// `GANTRY_ANALYZE_MAX_IMAGES`: the most images an analysis request is answered with at
    /// once (default 256); a larger one becomes a queued analysis job.
    pub analyze_max_images: u32,
    /// `GANTRY_ANALYZE_JOB_MAX_IMAGES`: the most images one queued analysis job may name
    /// (default 100000); more answer 413.
    pub analyze_job_max_images: u32,
    /// `GANTRY_HEARTBEAT_INTERVAL` seconds (default 5).
    pub heartbeat_interval: Duration,
    /// `GANTRY_HEALTH_CHECK`: a trainer's own health check, a command run with `sh -c`; when it
    /// exits non-zero the node takes no new job, its output's first line saying why.
    pub health_check: Option<String>,
    /// `GANTRY_HEALTH_CHECK_INTERVAL` seconds between runs of `GANTRY_HEALTH_CHECK` (default 60).
    pub health_check_interval: Duration,
    /// `GANTRY_EVENT_MAX_DELIVER`: deliveries of a job event the registry cannot apply before
    /// it goes to the dead-letter stream (default 10).
    pub event_max_deliver: u32,
    /// `GANTRY_RECONCILE_INTERVAL` seconds between the reconciler's rounds (default 60).
    pub reconcile_interval: Duration,
    /// `GANTRY_RECONCILE_GRACE` seconds a queued or running job must be untouched before the
    /// reconciler may find it lost (default 300).
    pub reconcile_grace: Duration,
    /// `GANTRY_DATASET_RETENTION` seconds a dataset snapshot no queued or running job uses is
    /// kept after it was last stored (default 604800, 7 days).
    pub dataset_retention: Duration,
    /// `GANTRY_DATASETS_MAX_GB`, `GANTRY_MODELS_MAX_GB`, `GANTRY_UPLOADS_MAX_GB`: the most each
    /// object store holds (defaults 100, 100, 50); a full one refuses new objects.
    pub datasets_max_bytes: u64,
    /// See [`Config::datasets_max_bytes`].
    pub models_max_bytes: u64,
    /// See [`Config::datasets_max_bytes`].
    pub uploads_max_bytes: u64,
    /// `GANTRY_HEARTBEAT_MISSES` before a node is disconnected (default 3).
    pub heartbeat_misses: u32,
    /// `GANTRY_NODE_RETENTION` seconds a disconnected node stays listed (default 86400).
    pub node_retention: Duration,
    /// `GANTRY_LISTING_CHUNK_KB`: the largest piece of a listing body one registry reply
    /// carries, KiB (default 0: three quarters of the NATS server's `max_payload`).
    pub listing_chunk_bytes: usize,
    /// `GANTRY_TRAIN_HOLD` seconds a training submission is held waiting for its job to end
    /// before it answers 202 (default 900).
    pub train_hold: Duration,
    /// `GANTRY_MAX_PACKING_PER_USER`: datasets one user may have checked and packed at once
    /// (default 2); more answer 429.
    pub max_packing_per_user: u32,
    /// `GANTRY_MAX_HELD_PER_USER`: submissions one user may have held open at once (default 4).
    pub max_held_per_user: u32,
    /// `GANTRY_MAX_STREAMS_PER_USER`: job event streams one user may have open (default 8).
    pub max_streams_per_user: u32,
    /// `GANTRY_MAX_DATASET_GB`: the largest dataset (sum of image files) a submission may
    /// name (default 8); larger answers 413 before any charge.
    pub max_dataset_bytes: u64,
    /// `GANTRY_SESSION_TTL` seconds of inactivity after which a session expires (default 43200,
    /// 12 h; 1 to 2592000).
    pub session_ttl: Duration,
    /// `GANTRY_CACHE_DIR`: where a trainer caches dataset snapshots (default
    /// `<tmp>/gantry-trainer-<node name>`).
    pub cache_dir: Option<PathBuf>,
    /// `GANTRY_CACHE_MAX_GB`: the trainer's dataset cache budget (default 50); least recently
    /// used snapshots that no job is using are removed beyond it.
    pub cache_max_gb: f64,
    /// `GANTRY_STREAM_REPLICAS`: how many servers of a NATS cluster keep each JetStream stream
    /// and object store the api and the registry create (default 1, at most 5; 3 in production).
    pub stream_replicas: usize,
}

const API: &str = "gantry-api";
const AUTH: &str = "gantry-auth";
const REGISTRY: &str = "gantry-registry";
const TRAINER: &str = "gantry-trainer";
const ALL: &[&str] = &[API, AUTH, REGISTRY, TRAINER];
const ROLES: &[&str] = &[API, AUTH, REGISTRY];
const STORE: &[&str] = &[AUTH, REGISTRY];
const STREAMS: &[&str] = &[API, REGISTRY];

/// One environment variable a Gantry binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    /// Its name.
    pub name: &'static str,
    /// The binaries that read it (`gantry-api`, `gantry-auth`, `gantry-registry`,
    /// `gantry-trainer`).
    pub read_by: &'static [&'static str],
    /// A deployment must set it for these binaries: its default suits one machine only (a
    /// loopback address, no credentials).
    pub deployed_for: &'static [&'static str],
}

const fn v(name: &'static str, read_by: &'static [&'static str]) -> Variable {
    Variable {
        name,
        read_by,
        deployed_for: &[],
    }
}

const fn needed(name: &'static str, read_by: &'static [&'static str]) -> Variable {
    Variable {
        name,
        read_by,
        deployed_for: read_by,
    }
}

/// Every variable the binaries read: [`Config::from_env`]'s, telemetry's, and the few the
/// libraries inside them read. Deployment manifests are checked against it (tests/tests/k8s.rs).
pub const VARIABLES: &[Variable] = &[
    needed("GANTRY_HTTP_ADDR", &[API]),
    v("GANTRY_PUBLIC_URL", &[API]),
    v("GANTRY_TRUSTED_PROXIES", &[API]),
    needed("GANTRY_HEALTH_ADDR", &[AUTH, REGISTRY, TRAINER]),
    needed("NATS_URL", ALL),
    needed("GANTRY_NATS_NKEY_FILE", ROLES),
    needed("GANTRY_NATS_CA_FILE", ALL),
    v("GANTRY_NATS_CERT_FILE", ALL),
    v("GANTRY_NATS_KEY_FILE", ALL),
    needed("GANTRY_CALLOUT_ISSUER_FILE", &[REGISTRY]),
    needed("GANTRY_NATS_SYSTEM_NKEY_FILE", &[REGISTRY]),
    v("GANTRY_NODE_SESSION", &[REGISTRY]),
    needed("MONGODB_URI", STORE),
    v("GANTRY_DB_PREFIX", STORE),
    v("GANTRY_DATA_ROOT", &[API]),
    v("GANTRY_DATASETS_PATH", &[API]),
    v("GANTRY_ADMIN_USER", &[AUTH]),
    v("GANTRY_ADMIN_PASSWORD", &[AUTH]),
    v("GANTRY_ADMIN_EMAIL", &[AUTH]),
    v("GANTRY_ADMIN_API_TOKEN", &[AUTH]),
    needed("GANTRY_CLUSTER_TOKEN", &[TRAINER]),
    v("GANTRY_NODE_NAME", &[TRAINER]),
    v("GANTRY_NODE_WEIGHT", &[TRAINER]),
    v("GANTRY_WORKERS", &[TRAINER]),
    v("GANTRY_ANALYSIS_WORKERS", &[TRAINER]),
    v("GANTRY_ANALYSIS_CACHE_MB", &[TRAINER]),
    v("GANTRY_HEARTBEAT_INTERVAL", &[REGISTRY, TRAINER]),
    v("GANTRY_HEALTH_CHECK", &[TRAINER]),
    v("GANTRY_HEALTH_CHECK_INTERVAL", &[TRAINER]),
    v("GANTRY_EVENT_MAX_DELIVER", &[REGISTRY]),
    v("GANTRY_RECONCILE_INTERVAL", &[REGISTRY]),
    v("GANTRY_RECONCILE_GRACE", &[API, REGISTRY]),
    v("GANTRY_DATASET_RETENTION", &[API, REGISTRY]),
    v("GANTRY_DATASETS_MAX_GB", STREAMS),
    v("GANTRY_MODELS_MAX_GB", STREAMS),
    v("GANTRY_UPLOADS_MAX_GB", STREAMS),
    v("GANTRY_STREAM_REPLICAS", STREAMS),
    v("GANTRY_HEARTBEAT_MISSES", &[REGISTRY]),
    v("GANTRY_NODE_RETENTION", &[REGISTRY]),
    v("GANTRY_LISTING_CHUNK_KB", &[REGISTRY]),
    v("GANTRY_TRAIN_HOLD", &[API]),
    v("GANTRY_MAX_PACKING_PER_USER", &[API]),
    v("GANTRY_MAX_HELD_PER_USER", &[API]),
    v("GANTRY_ANALYZE_PRICE", &[API]),
    v("GANTRY_ANALYZE_MAX_IMAGES", &[API]),
    v("GANTRY_ANALYZE_JOB_MAX_IMAGES", &[API]),
    v("GANTRY_MAX_STREAMS_PER_USER", &[API]),
    v("GANTRY_MAX_DATASET_GB", &[API]),
    v("GANTRY_SESSION_TTL", &[AUTH]),
    v("GANTRY_CACHE_DIR", &[TRAINER]),
    v("GANTRY_CACHE_MAX_GB", &[TRAINER]),
    // Telemetry (crate::telemetry).
    v("RUST_LOG", ALL),
    v("OTEL_SERVICE_NAME", ALL),
    v("OTEL_EXPORTER_OTLP_ENDPOINT", ALL),
    v("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ALL),
    v("OTEL_EXPORTER_OTLP_PROTOCOL", ALL),
    v("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ALL),
    v("OTEL_TRACES_EXPORTER", ALL),
    v("OTEL_SDK_DISABLED", ALL),
    // The `host.name` of exported spans.
    v("HOSTNAME", ALL),
    // libtorch and CUDA keep their kernel caches under $HOME.
    v("HOME", &[TRAINER]),
];

/// The variable `name`, if a binary reads it.
pub fn variable(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|v| v.name == name)
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_with<T>(
    name: &'static str,
    default: T,
    secret: bool,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => f(v.trim()).map_err(|reason| ConfigError {
            var: name,
            value: if secret {
                "<redacted>".into()
            } else {
                v.clone()
            },
            reason,
        }),
    }
}

fn addr(name: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    parse_with(
        name,
        default.parse().expect("default address"),
        false,
        |v| {
            v.parse::<SocketAddr>()
                .map_err(|_| "expected host:port with a numeric IP, like 127.0.0.1:8080".into())
        },
    )
}

fn number<T>(name: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    parse_with(name, default, false, |v| {
        let n = v
            .parse::<T>()
            .map_err(|_| "expected a number".to_string())?;
        // Written so that NaN, which compares false to everything, is refused too.
        if !(n >= min && n <= max) {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(n)
    })
}

fn url(name: &'static str, default: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    parse_with(name, default.to_owned(), false, |v| {
        if schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) {
            Ok(v.to_owned())
        } else {
            Err(format!(
                "expected a URL starting with {}",
                schemes.join("://, ") + "://"
            ))
        }
    })
}

/// A file that must exist, when the variable is set.
fn file(name: &'static str) -> Result<Option<PathBuf>, ConfigError> {
    match var(name) {
        None => Ok(None),
        Some(v) => {
            let path = PathBuf::from(v.trim());
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(ConfigError {
                    var: name,
                    value: v,
                    reason: "no such file".into(),
                })
            }
        }
    }
}

impl Config {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let public_url = match var("GANTRY_PUBLIC_URL") {
            None => None,
            Some(v) => Some(
                url("GANTRY_PUBLIC_URL", &v, &["http", "https"])?
                    .trim_end_matches('/')
                    .to_owned(),
            ),
        };
        let admin_api_token = match var("GANTRY_ADMIN_API_TOKEN") {
            None => None,
            Some(v) if v.len() < 32 => {
                return Err(ConfigError {
                    var: "GANTRY_ADMIN_API_TOKEN",
                    value: "<redacted>".into(),
                    reason: format!("must be at least 32 characters (got {})", v.len()),
                })
            }
            Some(v) => Some(SecretString::from(v)),
        };
        let db_prefix = parse_with("GANTRY_DB_PREFIX", "gantry_".to_owned(), false, |v| {
            if v.len() <= 40
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                Ok(v.to_owned())
            } else {
                Err("letters, digits, '_' and '-' only, at most 40".into())
            }
        })?;
        let trusted_proxies = parse_with("GANTRY_TRUSTED_PROXIES", Vec::new(), false, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse::<std::net::IpAddr>()
                        .map_err(|_| format!("{a:?} is not an IP address"))
                })
                .collect()
        })?;
        Ok(Self {
            http_addr: addr("GANTRY_HTTP_ADDR", "127.0.0.1:8080")?,
            trusted_proxies,
            public_url,
            health_addr: addr("GANTRY_HEALTH_ADDR", "127.0.0.1:0")?,
            nats_url: url(
                "NATS_URL",
                "nats://127.0.0.1:4222",
                &["nats", "tls", "ws", "wss"],
            )?,
            nats_nkey_file: file("GANTRY_NATS_NKEY_FILE")?,
            nats_ca_file: file("GANTRY_NATS_CA_FILE")?,
            nats_client_cert: match (
                file("GANTRY_NATS_CERT_FILE")?,
                file("GANTRY_NATS_KEY_FILE")?,
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError {
                        var: "GANTRY_NATS_CERT_FILE",
                        value: String::new(),
                        reason: "GANTRY_NATS_CERT_FILE and GANTRY_NATS_KEY_FILE go together".into(),
                    })
                }
            },
            callout_issuer_file: file("GANTRY_CALLOUT_ISSUER_FILE")?,
            nats_system_nkey_file: file("GANTRY_NATS_SYSTEM_NKEY_FILE")?,
            node_session: Duration::from_secs(number(
                "GANTRY_NODE_SESSION",
                3600u64,
                10,
                30 * 86_400,
            )?),
            mongodb_uri: url(
                "MONGODB_URI",
                "mongodb://127.0.0.1:27017",
                &["mongodb", "mongodb+srv"],
            )?,
            db_prefix,
            data_root: PathBuf::from(var("GANTRY_DATA_ROOT").unwrap_or_else(|| "./data".into())),
            datasets_path: var("GANTRY_DATASETS_PATH").unwrap_or_else(|| "/".into()),
            admin_user: var("GANTRY_ADMIN_USER").unwrap_or_else(|| "admin".into()),
            admin_password: var("GANTRY_ADMIN_PASSWORD").map(SecretString::from),
            admin_email: var("GANTRY_ADMIN_EMAIL").unwrap_or_else(|| "admin@localhost".into()),
            admin_api_token,
            cluster_token: var("GANTRY_CLUSTER_TOKEN").map(SecretString::from),
            node_name: var("GANTRY_NODE_NAME"),
            node_weight: number("GANTRY_NODE_WEIGHT", 100u32, 1, 1_000_000)?,
            workers: number("GANTRY_WORKERS", 1u32, 1, 256)?,
            analysis_workers: number("GANTRY_ANALYSIS_WORKERS", 1u32, 0, 256)?,
            analysis_cache_mb: number("GANTRY_ANALYSIS_CACHE_MB", 2048.0f64, 1.0, 10_000_000.0)?,
            analyze_price: number("GANTRY_ANALYZE_PRICE", 0i64, 0, 1_000_000)?,
            analyze_max_images: number("GANTRY_ANALYZE_MAX_IMAGES", 256u32, 1, 100_000)?,
            analyze_job_max_images: number(
                "GANTRY_ANALYZE_JOB_MAX_IMAGES",
                100_000u32,
                1,
                1_000_000,
            )?,
            heartbeat_interval: Duration::from_millis(
                (number("GANTRY_HEARTBEAT_INTERVAL", 5.0f64, 0.05, 3600.0)? * 1000.0) as u64,
            ),
            health_check: var("GANTRY_HEALTH_CHECK"),
            health_check_interval: Duration::from_millis(
                (number("GANTRY_HEALTH_CHECK_INTERVAL", 60.0f64, 1.0, 86_400.0)? * 1000.0) as u64,
            ),
            heartbeat_misses: number("GANTRY_HEARTBEAT_MISSES", 3u32, 1, 1000)?,
            event_max_deliver: number("GANTRY_EVENT_MAX_DELIVER", 10u32, 2, 1000)?,
            reconcile_interval: Duration::from_millis(
                (number("GANTRY_RECONCILE_INTERVAL", 60.0f64, 0.2, 86_400.0)? * 1000.0) as u64,
            ),
            reconcile_grace: Duration::from_millis(
                (number("GANTRY_RECONCILE_GRACE", 300.0f64, 0.2, 86_400.0)? * 1000.0) as u64,
            ),
            dataset_retention: Duration::from_millis(
                (number(
                    "GANTRY_DATASET_RETENTION",
                    604_800.0f64,
                    0.5,
                    3650.0 * 86_400.0,
                )? * 1000.0) as u64,
            ),
            datasets_max_bytes: (number("GANTRY_DATASETS_MAX_GB", 100.0f64, 0.000_001, 1e6)? * 1e9)
                as u64,
            models_max_bytes: (number("GANTRY_MODELS_MAX_GB", 100.0f64, 0.000_001, 1e6)? * 1e9)
                as u64,
            uploads_max_bytes: (number("GANTRY_UPLOADS_MAX_GB", 50.0f64, 0.000_001, 1e6)? * 1e9)
                as u64,
            listing_chunk_bytes: number("GANTRY_LISTING_CHUNK_KB", 0usize, 0, 65_536)? * 1024,
            node_retention: Duration::from_secs(number(
                "GANTRY_NODE_RETENTION",
                86_400u64,
                1,
                365 * 86_400,
            )?),
            train_hold: Duration::from_millis(
                (number("GANTRY_TRAIN_HOLD", 900.0f64, 0.1, 86_400.0)? * 1000.0) as u64,
            ),
            max_packing_per_user: number("GANTRY_MAX_PACKING_PER_USER", 2u32, 1, 1024)?,
            max_held_per_user: number("GANTRY_MAX_HELD_PER_USER", 4u32, 1, 10_000)?,
            max_streams_per_user: number("GANTRY_MAX_STREAMS_PER_USER", 8u32, 1, 10_000)?,
            max_dataset_bytes: (number("GANTRY_MAX_DATASET_GB", 8.0f64, 0.000_001, 10_000.0)? * 1e9)
                as u64,
            session_ttl: Duration::from_secs(number(
                "GANTRY_SESSION_TTL",
                43_200u64,
                1,
                30 * 86_400,
            )?),
            cache_dir: var("GANTRY_CACHE_DIR").map(|d| PathBuf::from(d.trim())),
            cache_max_gb: number("GANTRY_CACHE_MAX_GB", 50.0f64, 0.0, 1_000_000.0)?,
            stream_replicas: number("GANTRY_STREAM_REPLICAS", 1usize, 1, 5)?,
        })
    }

    /// The MongoDB database a service owns: `<prefix><service>`.
    pub fn database_name(&self, service: &str) -> String {
        format!("{}{}", self.db_prefix, service)
    }
}

#[cfg(test)]
mod variable_tests {
    use super::*;

    /// The quoted variable names in `source`: upper-case words with an underscore, in the
    /// families Gantry reads.
    fn names_in(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for piece in source.split('"').skip(1).step_by(2) {
            let plain = !piece.is_empty()
                && piece
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            let ours = ["GANTRY_", "NATS_URL", "MONGODB_", "OTEL_", "RUST_LOG"]
                .iter()
                .any(|p| piece.starts_with(p));
            if plain && ours {
                found.push(piece.to_owned());
            }
        }
        found
    }

    #[test]
    fn every_variable_the_code_reads_is_listed() {
        let source = include_str!("config.rs");
        let code = source.split("#[cfg(test)]").next().unwrap();
        let (before, list) = code.split_once("pub const VARIABLES").unwrap();
        let (_, after) = list.split_once("\n];").unwrap();
        let config = format!("{before}{after}");
        let mut read = names_in(&config);
        read.extend(names_in(include_str!("telemetry.rs")));
        assert!(read.len() > 40, "{read:?}");
        for name in read {
            assert!(
                variable(&name).is_some(),
                "{name} is read but not in VARIABLES"
            );
        }
    }

    #[test]
    fn the_list_names_each_variable_once_and_only_known_binaries() {
        for (i, a) in VARIABLES.iter().enumerate() {
            assert!(
                VARIABLES[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
            assert!(!a.read_by.is_empty(), "{}", a.name);
            for b in a.read_by.iter().chain(a.deployed_for) {
                assert!(ALL.contains(b), "{}: {b}", a.name);
            }
            assert!(a.deployed_for.iter().all(|b| a.read_by.contains(b)));
        }
    }
}
