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

/// What changed in one image's curated list (`kind`: `package`,
/// `requirement`) between the committed lock (`locked`) and the images'
/// tables (`requested`), one line each.
pub fn list_changes(
    image: &str,
    kind: &str,
    locked: &[String],
    requested: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for r in requested.iter().filter(|r| !locked.contains(r)) {
        out.push(format!(
            "image {image}: {kind} {r} is requested but not locked"
        ));
    }
    for r in locked.iter().filter(|r| !requested.contains(r)) {
        out.push(format!(
            "image {image}: {kind} {r} is locked but no longer requested"
        ));
    }
    out
}

/// One curated list of an image and its locked copy: (what, curated,
/// locked).
pub type LockedList<'a> = (&'a str, &'a [String], &'a [String]);

/// An image's entry in the lockfile `path` must exist and be made from the
/// curated lists of its table (`table`: `debian`, `python`; `at` the
/// image.toml position of the table). Each list is (what, curated, locked).
pub fn check_image(
    path: &str,
    at: &str,
    image: &str,
    table: &str,
    entry: Option<&[LockedList]>,
) -> Result<()> {
    let Some(lists) = entry else {
        bail!("{at}: image {image} is not in {path}; run cargo xtask lock");
    };
    for (what, curated, locked) in lists {
        if curated != locked {
            bail!(
                "{at}: the [{table}] {what} of image {image} ({}) differ from {path} ({}); run cargo xtask lock",
                curated.join(", "),
                locked.join(", ")
            );
        }
    }
    Ok(())
}
