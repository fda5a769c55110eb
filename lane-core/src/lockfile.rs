//! What every lockfile of the lane shares: a comment header, TOML from one
//! serialisation, and a parser that names the file and the fix.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The lockfile's text: `header`, then the TOML of `lock`.
pub fn render<T: Serialize>(header: &str, path: &str, lock: &T) -> Result<String> {
    Ok(format!(
        "{header}{}",
        toml::to_string(lock).with_context(|| format!("serialising {path}"))?
    ))
}

/// Parses the lockfile `path`; its format version (`version` of the parsed
/// value) must be 1.
pub fn parse<T: DeserializeOwned>(path: &str, text: &str, version: fn(&T) -> u32) -> Result<T> {
    let lock: T = toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{path}: {}; run cargo xtask lock to write it again",
            e.message().trim_end_matches('.')
        )
    })?;
    if version(&lock) != 1 {
        bail!(
            "{path}: version {} is not supported (expected 1); run cargo xtask lock",
            version(&lock)
        );
    }
    Ok(lock)
}
