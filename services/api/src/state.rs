//! What every handler shares.

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
    /// Mark the session cookie `Secure` (the public URL is https).
    pub secure_cookies: bool,
}

impl AppState {
    /// Build from configuration and a NATS connection.
    pub async fn new(config: &Config, nats: async_nats::Client) -> anyhow::Result<Self> {
        Ok(Self {
            auth: Authenticator::new(nats.clone(), config.public_url.clone()).await?,
            nats,
            data_root: DataRoot::new(&config.data_root),
            secure_cookies: config
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
        })
    }
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
