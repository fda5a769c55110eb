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

/// `lockfiles/bases.lock`: the registry bases an image may name, pinned by
/// digest (written by hand; `build` checks an image's base against it).
pub const BASES_LOCK: &str = "lockfiles/bases.lock";

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasesLock {
    pub version: u32,
    #[serde(default)]
    pub base: Vec<LockedBase>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBase {
    pub reference: String,
}

/// Parses `lockfiles/bases.lock`; every error names the file.
pub fn parse_bases(text: &str) -> Result<BasesLock> {
    let lock: BasesLock = toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{BASES_LOCK}: {}; expected version = 1 and [[base]] reference = \"HOST/REPOSITORY@sha256:...\"",
            e.message().trim_end_matches('.')
        )
    })?;
    if lock.version != 1 {
        bail!(
            "{BASES_LOCK}: version {} is not supported; write version = 1",
            lock.version
        );
    }
    Ok(lock)
}

/// Hostile lockfiles (docs/fault-matrix-parsers.md; the Debian and Python locks have
/// their own next to their types): `lockfiles/bases.lock`.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated_text};
    use proptest::prelude::*;

    const SAMPLE: &str = "version = 1\n\n[[base]]\nreference = \"registry.example.com/base@sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n";

    #[test]
    fn the_sample_parses() {
        assert_eq!(parse_bases(SAMPLE).unwrap().base.len(), 1);
        parse_bases(include_str!("../../lockfiles/bases.lock")).unwrap();
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn bases_lock_arbitrary_and_mutated(text in any::<String>(), m in mutated_text(SAMPLE)) {
            for t in [text, m] {
                if let Err(e) = parse_bases(&t) {
                    clear_error(&e, BASES_LOCK)?;
                }
            }
        }
    }
}
