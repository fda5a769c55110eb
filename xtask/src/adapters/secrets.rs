//! Secrets stay in this process (audit finding 13): the registry password,
//! the signing key's PEM and the OIDC request token are moved out of the
//! environment when the program starts, before any thread or subprocess
//! exists, so git, apt-get, pip, cargo, rustc and credential helpers never
//! inherit them. The lane reads them through [`var`].

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The variables that hold secrets.
/// (`registry::ENV_PASSWORD`, `lane_core::signing::ENV_KEY`,
/// `oidc::ENV_REQUEST_TOKEN`: their modules read them through [`var`], and
/// their tests check the names match.)
pub const SECRET_VARS: &[&str] = &[
    "LANE_REGISTRY_PASSWORD",
    lane_core::signing::ENV_KEY,
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
];

static TAKEN: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// Moves [`SECRET_VARS`] out of the environment. Call it first thing in
/// `main`, while the process has one thread.
pub fn take_from_environment() {
    let mut taken = BTreeMap::new();
    for name in SECRET_VARS {
        if let Ok(v) = std::env::var(name) {
            taken.insert(name.to_string(), v);
            // SAFETY: called at the start of main, before any other thread
            // exists, so nothing reads the environment concurrently.
            unsafe { std::env::remove_var(name) };
        }
    }
    let _ = TAKEN.set(taken);
}

/// The variable `name`: a secret taken at start, else the environment
/// (the tests and the bench call the lane in-process).
pub fn var(name: &str) -> Option<String> {
    TAKEN
        .get()
        .and_then(|m| m.get(name).cloned())
        .or_else(|| std::env::var(name).ok())
}
