//! What every handler shares.

use std::net::IpAddr;

use gantry_runtime::Config;

use crate::auth::Authenticator;
use crate::data_path::DataRoot;

/// Shared by the API groups.
#[derive(Clone)]
pub struct AppState {
    /// The NATS connection to the services behind the api.
    pub nats: async_nats::Client,
    /// Verifies credentials.
    pub auth: Authenticator,
    /// `GANTRY_DATA_ROOT`.
    pub data_root: DataRoot,
    /// `GANTRY_DATASETS_PATH`: where the datasets users may train on are, under the data root.
    pub datasets_path: String,
    /// Mark the session cookie `Secure` (the public URL is https).
    pub secure_cookies: bool,
    /// `GANTRY_TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpAddr>,
    /// Per-user counters of packing, held submissions and event streams.
    pub slots: crate::slots::UserSlots,
    /// Their bounds, and the largest dataset, from the configuration.
    pub limits: Limits,
    /// The cluster listings last served, by query.
    pub listings: std::sync::Arc<crate::listing::Listings>,
    /// The hashes of dataset folders already packed, so one submitted again unchanged is not.
    pub snapshots: std::sync::Arc<crate::train::SnapshotCache>,
    /// Dataset snapshots lately seen stored and fresh.
    pub stored: std::sync::Arc<crate::enqueue::StoredSnapshots>,
}

/// Per-user bounds (`GANTRY_MAX_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Datasets packed at once.
    pub packing: u32,
    /// Submissions held open at once.
    pub held: u32,
    /// Event streams open at once.
    pub streams: u32,
    /// Largest dataset, bytes.
    pub dataset_bytes: u64,
    /// How long an unused dataset snapshot is kept (`GANTRY_DATASET_RETENTION`).
    pub dataset_retention: std::time::Duration,
    /// The longest a submission may take from its charge to recording its job: half of
    /// `GANTRY_RECONCILE_GRACE`, after which the reconciler refunds a charge with no job.
    pub record_deadline: std::time::Duration,
    /// `GANTRY_ANALYZE_PRICE`: credit tokens a user pays per analysed image.
    pub analyze_price: i64,
    /// `GANTRY_ANALYZE_MAX_IMAGES`: the most images answered at once; more are queued.
    pub analyze_max_images: u32,
    /// `GANTRY_ANALYZE_JOB_MAX_IMAGES`: the most images one queued analysis may name.
    pub analyze_job_max_images: u32,
}

impl AppState {
    /// Build from configuration and a NATS connection.
    pub async fn new(config: &Config, nats: async_nats::Client) -> anyhow::Result<Self> {
        Ok(Self {
            auth: Authenticator::new(nats.clone(), config.public_url.clone()).await?,
            nats,
            data_root: DataRoot::new(&config.data_root),
            datasets_path: config.datasets_path.clone(),
            secure_cookies: config
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
            trusted_proxies: config.trusted_proxies.clone(),
            slots: Default::default(),
            listings: Default::default(),
            snapshots: Default::default(),
            stored: Default::default(),
            limits: Limits {
                packing: config.max_packing_per_user,
                held: config.max_held_per_user,
                streams: config.max_streams_per_user,
                dataset_bytes: config.max_dataset_bytes,
                dataset_retention: config.dataset_retention,
                record_deadline: config.reconcile_grace / 2,
                analyze_price: config.analyze_price,
                analyze_max_images: config.analyze_max_images,
                analyze_job_max_images: config.analyze_job_max_images,
            },
        })
    }

    /// The address a request comes from: the TCP peer, or, when the peer is a trusted proxy,
    /// the nearest address in `X-Forwarded-For` that is not one (proxies append, so whatever a
    /// client wrote itself stands further left and is never taken past an untrusted hop).
    pub fn client_address(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> String {
        client_address(peer, forwarded_for, &self.trusted_proxies)
    }
}

fn client_address(peer: Option<IpAddr>, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> String {
    let Some(peer) = peer else {
        return String::new();
    };
    if !trusted.contains(&peer) {
        return peer.to_string();
    }
    let hops = forwarded_for
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .rev();
    for hop in hops {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip.to_string(),
            // Something no proxy of ours wrote: stop at the last address we can vouch for.
            Err(_) => break,
        }
    }
    peer.to_string()
}

impl AppState {
    /// Ask a registry endpoint (`gantry.registry.v1.<endpoint>`); its failure becomes the api's error.
    pub async fn registry<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> crate::error::ApiResult<Resp> {
        Ok(gantry_runtime::nats::request(
            &self.nats,
            gantry_contracts::subjects::registry(endpoint),
            req,
        )
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::client_address;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_counts_whatever_the_header_says() {
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), Some("1.2.3.4"), &[]),
            "10.0.0.1"
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_nearest_untrusted_hop_counts() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let peer = Some(ip("10.0.0.1"));
        assert_eq!(
            client_address(peer, Some("203.0.113.7, 10.0.0.2"), &trusted),
            "203.0.113.7"
        );
        // A client that forges an address ahead of its own is still seen as itself.
        assert_eq!(
            client_address(peer, Some("1.1.1.1, 198.51.100.9"), &trusted),
            "198.51.100.9"
        );
        // No header, or one that says nothing usable: the proxy itself.
        assert_eq!(client_address(peer, None, &trusted), "10.0.0.1");
        assert_eq!(client_address(peer, Some("junk"), &trusted), "10.0.0.1");
    }
}
