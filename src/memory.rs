//! Giving memory back to the system: freed heap after load, and the code only start-up ran.
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

/// Pages out the executable's own read-only mappings (code and constants). Start-up runs much
/// code once (configuration, opening and upgrading the store, building the routes), and the
/// kernel maps up to 64 KiB of the file around each page touched: a fresh server kept about
/// 9 MiB of its 19 MiB of code resident, most of it never run again. These are clean pages of
/// the binary's file, so paging them out loses nothing; the first requests read the code they
/// need back from it. Called once, after start-up, by the binary (not by tests, which share
/// their process). Linux 5.4 and later; elsewhere, or when refused, nothing happens.
#[cfg(target_os = "linux")]
pub fn drop_startup_pages() {
    use std::os::raw::{c_int, c_void};
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    const MADV_PAGEOUT: c_int = 21;
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return;
    };
    for line in maps.lines() {
        // `start-end perms offset dev inode path`; only the path has slashes.
        let Some(path) = line.find('/').map(|at| &line[at..]) else {
            continue;
        };
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if std::path::Path::new(path) != exe || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is one whole mapping of this process, read-only, as
        // /proc/self/maps lists it. MADV_PAGEOUT reclaims pages without changing what they
        // hold: clean pages of the file are dropped and read back from it on the next access;
        // private copies (the relocated read-only data) go to swap if there is any and stay
        // otherwise. No thread sees memory change. An error (an older kernel) leaves the
        // pages where they are.
        unsafe {
            madvise(
                start as *mut c_void,
                end.saturating_sub(start),
                MADV_PAGEOUT,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn drop_startup_pages() {}
