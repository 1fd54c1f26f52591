//! The cancel and shutdown flags of one job in flight ([`JobControl`]): set by the worker (a
//! cancel message, the node stopping), read by the run and its training thread.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// Cancel and shutdown flags of one job in flight.
#[derive(Default)]
pub struct JobControl {
    interrupted: CancellationToken,
    cancelled: AtomicBool,
    stopping: AtomicBool,
}

impl JobControl {
    /// A cancel arrived: stop, publish `Cancelled`, nothing else after.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.interrupted.cancel();
    }

    /// The node is stopping: stop and hand the job back.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.interrupted.cancel();
    }

    /// Whether a cancel arrived.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the node is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether the job should stop, for either reason.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.is_cancelled()
    }

    /// Resolves once the job should stop, for either reason.
    pub async fn interrupted(&self) {
        self.interrupted.cancelled().await
    }
}
