//! Trying again until something is ready: the store, JetStream, a registry that has not answered
//! yet. Waits grow from [`Backoff::FIRST`] to [`Backoff::MAX`], so a dependency that comes up
//! late is found quickly and one that stays down is not hammered; failures are logged on the
//! first try and every tenth after, never silently dropped nor logged on every try.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Growing waits between tries: doubling from a first wait up to a ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// The first wait of [`Backoff::default`].
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest wait of [`Backoff::default`].
    pub const MAX: Duration = Duration::from_secs(1);

    /// Waits of `first`, twice that, and so on, never longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The wait before the next try; each call returns a longer one, up to the ceiling.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::FIRST, Self::MAX)
    }
}

/// Sleep for `wait`, or less when `stop` fires: false when it did.
pub async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Run `attempt` until it succeeds, waiting longer after each failure ([`Backoff::default`]).
/// `what` names it in the logs. `None` when `stop` fires first.
pub async fn until_ready<T, E, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ready_with(what, stop, Backoff::default(), attempt).await
}

/// [`until_ready`] with other waits.
pub async fn until_ready_with<T, E, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut backoff: Backoff,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        if stop.is_cancelled() {
            return None;
        }
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => note_failure(what, &mut failures, &e),
        }
        if !pause(stop, backoff.next_wait()).await {
            return None;
        }
    }
}

/// Run `attempt` until it succeeds, as long as its errors are `transient` and `deadline` has not
/// passed ([`Backoff::default`] waits in between): otherwise its last error. For one-shot
/// commands that give up after a while rather than on shutdown.
pub async fn until_deadline<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if transient(&e) && Instant::now() < deadline => {
                note_failure(what, &mut failures, &e)
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Count a failed try; warn on the first and every tenth.
fn note_failure(what: &str, failures: &mut u32, error: &impl Display) {
    *failures += 1;
    if *failures == 1 || failures.is_multiple_of(10) {
        tracing::warn!(error = %error, attempt = *failures, "{what}: not ready yet; retrying");
    } else {
        tracing::debug!(error = %error, attempt = *failures, "{what}: not ready yet; retrying");
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350, 350]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_dependency_is_found_after_growing_waits() {
        let tries = Cell::new(0);
        let started = Instant::now();
        let got = until_ready("the test dependency", &CancellationToken::new(), || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                if n < 4 {
                    Err("down")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Some(4));
        // 100 + 200 + 400 ms of waiting before the fourth try.
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_waiting_with_nothing() {
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            stopper.cancel();
        });
        let got: Option<()> = until_ready("the test dependency", &stop, || async {
            Err::<(), _>("down")
        })
        .await;
        assert_eq!(got, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_gives_back_the_last_error() {
        let deadline = Instant::now() + Duration::from_secs(2);
        let tries = Cell::new(0);
        let got: Result<(), String> = until_deadline(
            "the test call",
            deadline,
            |_| true,
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move { Err(format!("down {n}")) }
            },
        )
        .await;
        assert_eq!(got, Err(format!("down {}", tries.get())));
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_is_not_transient_ends_at_once() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let tries = Cell::new(0);
        let got: Result<(), &str> = until_deadline(
            "the test call",
            deadline,
            |e: &&str| *e == "busy",
            || {
                tries.set(tries.get() + 1);
                async { Err("refused") }
            },
        )
        .await;
        assert_eq!(got, Err("refused"));
        assert_eq!(tries.get(), 1);
    }
}
