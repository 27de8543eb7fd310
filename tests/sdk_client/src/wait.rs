//! Bounded waits: every wait in the program ends, with a message naming what it waited for.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The longest any single condition is waited for.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(100);

/// Checks `check` until it answers `Some`, for at most [`WAIT`]. An error from `check` ends
/// the wait at once (a sync that failed will not recover by waiting).
pub async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", WAIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs one future for at most [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(WAIT, future).await {
        Ok(result) => result,
        Err(_) => bail!("timed out after {} s: {what}", WAIT.as_secs()),
    }
}
