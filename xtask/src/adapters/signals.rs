//! SIGINT and SIGTERM outside the smoke gate: the run stops at once and
//! removes the temporaries it was writing (everything [`temp_path`] named
//! that still exists: half-written cache blobs, layouts, store files), so
//! nothing of it is left behind; then it exits with 128 + the signal.
//! During the smoke gate the engine adapter installs its own handler, which
//! stops the smoke run and removes its containers (`engine::smoke`).
//!
//! [`temp_path`]: crate::adapters::cache::temp_path

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Process groups of children that do not share the lane's own group
/// (a cancellable cargo): killed on a signal, as the terminal would have.
static GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Remembers a child's process group until [`disown_group`].
pub fn own_group(group: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.push(group);
    }
}

pub fn disown_group(group: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|x| *x != group);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Installs the handlers and the thread that acts on them.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, handler) };
    }
    std::thread::spawn(|| {
        loop {
            let sig = RECEIVED.load(Ordering::SeqCst);
            if sig != 0 {
                for group in GROUPS.lock().map(|g| g.clone()).unwrap_or_default() {
                    // SAFETY: kill(2) of a process group this run started.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
                // Twice: a background thread (the second build's copy)
                // may have been writing into a folder the first pass
                // removed.
                let mut removed = crate::adapters::cache::remove_own_temporaries();
                std::thread::sleep(Duration::from_millis(50));
                removed += crate::adapters::cache::remove_own_temporaries();
                let name = if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                eprintln!("interrupted ({name}): stopped, {removed} temporary files removed");
                std::process::exit(128 + sig);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
