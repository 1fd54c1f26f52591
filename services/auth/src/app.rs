//! What every handler shares: the store, the NATS client (for revocation announcements), the
//! settings, and whether start-up work is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_contracts::auth::{Revocation, REVOCATIONS};
use gantry_runtime::nats;

use crate::error::{AuthError, AuthResult};
use crate::store::Store;

/// Tunables read at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inactivity after which a session expires (`GANTRY_SESSION_TTL` seconds, default 12 h).
    pub session_ttl: Duration,
    /// Failed logins allowed per username from one client within [`Settings::failure_window`].
    pub max_failures_per_user: u64,
    /// Failed logins allowed per client within [`Settings::failure_window`].
    pub max_failures_per_client: u64,
    /// The rate limiter's sliding window.
    pub failure_window: Duration,
    /// How long the api may cache a verification.
    pub verify_cache: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            max_failures_per_user: 5,
            max_failures_per_client: 20,
            failure_window: Duration::from_secs(300),
            verify_cache: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Defaults, with the session lifetime from the configuration (`GANTRY_SESSION_TTL`).
    pub fn from_config(config: &gantry_runtime::config::Config) -> Self {
        Self {
            session_ttl: config.session_ttl,
            ..Self::default()
        }
    }
}

struct Inner {
    store: Store,
    nats: async_nats::Client,
    settings: Settings,
    started: AtomicBool,
    problem: Mutex<Option<String>>,
}

/// Cheap to clone; one per process.
#[derive(Clone)]
pub struct App(Arc<Inner>);

impl App {
    /// Wrap the handles. Requests are refused as unavailable until [`App::mark_started`].
    pub fn new(store: Store, nats: async_nats::Client, settings: Settings) -> Self {
        Self(Arc::new(Inner {
            store,
            nats,
            settings,
            started: AtomicBool::new(false),
            problem: Mutex::new(None),
        }))
    }

    /// The collections.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The tunables.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Indexes exist and the first admin is in place.
    pub fn mark_started(&self) {
        self.0.started.store(true, Ordering::Release);
    }

    /// Remember why start-up has not finished yet, for `/readyz`.
    pub fn set_problem(&self, problem: Option<String>) {
        *self.0.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// `None` once started, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.started() {
            return None;
        }
        let problem = self
            .0
            .problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(format!(
            "start-up: {}",
            problem.unwrap_or_else(|| "waiting for the store".into())
        ))
    }

    /// Whether [`App::mark_started`] was called.
    pub fn started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }

    /// Refuse work until start-up is done: before the indexes exist, unique rules would not hold.
    pub fn ensure_started(&self) -> AuthResult<()> {
        if self.started() {
            Ok(())
        } else {
            Err(AuthError::Unavailable(
                "the auth service is starting: its store is not ready yet".into(),
            ))
        }
    }

    /// Tell every api replica to drop what it cached about `user_id`. Best effort: a lost
    /// announcement only means the cache entry lives out its (short) time.
    pub async fn announce_revocation(&self, user_id: i64) {
        if let Err(e) = nats::publish(
            &self.0.nats,
            REVOCATIONS.to_owned(),
            &Revocation { user_id },
        )
        .await
        {
            tracing::warn!(error = %e, user_id, "could not announce a revocation");
        }
    }
}
