//! Giving freed heap memory back to the system after load.
//!
//! glibc's allocator keeps what the program frees (the buffers of a burst of connections,
//! a large initial sync) in its arenas and returns to the system only what lies at the top
//! of a heap, so after a peak the server's resident memory would stay near it for good.
//! `malloc_trim` releases every whole free page; run every few seconds it is cheap when there
//! is little to free (a walk over the allocator's free lists), and under load it only makes
//! the allocator fault some pages in again. Other allocators (musl) return memory themselves.

use std::time::Duration;

use tokio::sync::watch;

/// How often freed memory is released.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Releases freed memory now (what opening the store and starting up freed) and then every
/// [`TRIM_EVERY`] until `shutdown`.
pub async fn release_freed_memory(mut shutdown: watch::Receiver<bool>) {
    loop {
        // It takes the allocator's locks and may walk a large heap: off the async workers.
        let _ = tokio::task::spawn_blocking(trim).await;
        tokio::select! {
            _ = tokio::time::sleep(TRIM_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: `malloc_trim` (glibc) takes no pointers, only the amount of free memory to
    // keep at the top of the heap, and locks each arena while it works, so any thread may
    // call it at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
