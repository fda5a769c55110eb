//! Fault injection at named points of a run, for the crash and race tests
//! (docs/faults.md lists the points). Two environment variables, both
//! unset in normal use:
//!
//! - `LANE_FAULT_KILL_AT=POINT`: at `POINT` the process sends itself
//!   SIGKILL: no destructor, no handler, no flush runs, exactly as when the
//!   machine's OOM killer or a CI runner's timeout ends it.
//! - `LANE_FAULT_WAIT_AT=POINT:FILE`: at `POINT` the process waits until
//!   `FILE` exists (at most two minutes), after writing `FILE.PID.waiting`,
//!   so a test can line two processes up on the same step (two releases
//!   moving one tag at once).
//!
//! Each point is a `&'static str` of the form `stage:event` named where it
//! is reached; [`POINTS`] lists them all so a test can try each.

use std::path::Path;
use std::time::{Duration, Instant};

/// Every point a fault can be injected at, in the order a release reaches
/// them.
pub const POINTS: &[&str] = &[
    BUILD_LAYER_CACHED,
    BUILD_LAYOUT_SWAPPING,
    PUBLISH_BLOB_STORED,
    PUBLISH_MANIFEST_STORED,
    RELEASE_GATES_RUN,
    RELEASE_EVIDENCE_ATTACHED,
    RELEASE_TAG_MOVED,
    RELEASE_TAGS_MOVED,
];

/// A layer blob was written to the action cache (the build is half done).
pub const BUILD_LAYER_CACHED: &str = "build:layer-cached";
/// The old layout was moved aside and the new one is not in place yet.
pub const BUILD_LAYOUT_SWAPPING: &str = "build:layout-swapping";
/// One blob of the candidate is in the store, the others are not.
pub const PUBLISH_BLOB_STORED: &str = "publish:blob-stored";
/// The candidate's manifest is in the store; not cross-checked yet.
pub const PUBLISH_MANIFEST_STORED: &str = "publish:manifest-stored";
/// Every gate ran; nothing is attached and no tag moved.
pub const RELEASE_GATES_RUN: &str = "release:gates-run";
/// The first evidence statement is attached; the others and the tags not.
pub const RELEASE_EVIDENCE_ATTACHED: &str = "release:evidence-attached";
/// The first release tag moved; the next ones not.
pub const RELEASE_TAG_MOVED: &str = "release:tag-moved";
/// Every tag moved; the release record is neither attached nor written.
pub const RELEASE_TAGS_MOVED: &str = "release:tags-moved";

/// Reached `point`: applies the fault the environment asks for there.
pub fn point(point: &str) {
    if std::env::var("LANE_FAULT_KILL_AT").is_ok_and(|p| p == point) {
        // SAFETY: kill(2) on our own pid has no memory-safety conditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    if let Ok(spec) = std::env::var("LANE_FAULT_WAIT_AT")
        && let Some(file) = spec.strip_prefix(point).and_then(|f| f.strip_prefix(':'))
    {
        // `FILE.PID.waiting` tells the test this process is here.
        let _ = std::fs::write(format!("{file}.{}.waiting", std::process::id()), b"");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !Path::new(file).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
