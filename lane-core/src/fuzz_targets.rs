//! The fuzz targets (issue 27): one function per parser that reads
//! untrusted bytes. Each must return, never panic, whatever the input.
//! `fuzz/` runs them under libFuzzer (`cargo +nightly fuzz run NAME`);
//! the tests below run the same functions on stable, over the committed
//! seed corpora (`fuzz/corpus/NAME/`) and over bounded mutations of them,
//! in `bash .ci/run`.

use serde_json::{Value, json};

/// A fuzz target: untrusted bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus folder and fuzz binary have.
pub const TARGETS: &[(&str, Target)] = &[
    ("jwt", jwt),
    ("dsse", dsse),
    ("statement", statement),
    ("policy", policy),
    ("image_toml", image_toml),
    ("locks", locks),
    ("deb822", deb822),
    ("deb", deb),
    ("wheel", wheel),
    ("oci", oci),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// An ID token (the first line) checked against a JWKS and a discovery
/// document (the rest, as JSON, when it parses).
pub fn jwt(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let (token, rest) = t.split_once('\n').unwrap_or((t, ""));
    let doc = crate::strict_json::parse(rest.as_bytes()).unwrap_or(json!({ "keys": [] }));
    let expected = crate::identity::Expected {
        issuer: "https://issuer.example",
        audience: "release-lane",
        now: 1_800_000_000,
    };
    let _ = crate::identity::verify_token(token, &doc, "https://issuer.example/jwks", expected);
    let _ = crate::identity::jwks_uri(
        &doc,
        "https://issuer.example",
        "https://issuer.example/.well-known/openid-configuration",
    );
}

/// A DSSE envelope, its signature checked against no trusted key.
pub fn dsse(data: &[u8]) {
    if let Ok(v) = crate::strict_json::parse(data) {
        let _ = crate::signing::check_envelope(&v, &[]);
    }
}

/// An in-toto statement: the provenance completeness rule over it.
pub fn statement(data: &[u8]) {
    if let Ok(v) = crate::strict_json::parse(data) {
        let _ = crate::provenance::missing_fields(&v);
    }
}

/// `ci/release-policy.toml`.
pub fn policy(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::gates::parse_policy("ci/release-policy.toml", t);
    }
}

/// `images/NAME/image.toml`.
pub fn image_toml(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::spec::parse("images/fuzz/image.toml", t);
    }
}

/// The Debian, Python and bases locks.
pub fn locks(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::debian::parse_lock(t);
        let _ = crate::python::lock::parse(t);
        let _ = crate::lockfile::parse_bases(t);
    }
}

/// deb822 stanzas (apt `Packages` indexes, dpkg status) and their
/// dependency fields.
pub fn deb822(data: &[u8]) {
    if let Some(t) = text(data)
        && let Ok(stanzas) = crate::debian::parse_stanzas(t)
    {
        for s in &stanzas {
            for field in ["Depends", "Pre-Depends"] {
                if let Some(v) = s.get(field) {
                    let _ = crate::debian::parse_deps(v);
                }
            }
        }
    }
}

/// A .deb archive.
pub fn deb(data: &[u8]) {
    let _ = crate::debian::read_deb("fuzz", data);
}

/// A wheel archive.
pub fn wheel(data: &[u8]) {
    let _ = crate::python::wheel::read("fuzz-1.0-py3-none-any.whl", data);
}

/// OCI documents a registry serves: a referrers index, a manifest, an
/// image layout's index.json, a base image's manifest.
pub fn oci(data: &[u8]) {
    let _ = crate::store::parse_referrers(data);
    let _ = crate::store::manifest_blobs("the manifest", data);
    let _ = crate::oci::parse_base_manifest("fuzz/base@sha256:0", data);
    let _ = crate::distribution::LocalImage::parse(
        "fuzz",
        std::path::Path::new("/nonexistent"),
        data,
        &|_| anyhow::bail!("no blobs"),
    );
    let _: Option<Value> = crate::strict_json::parse(data).ok();
}

#[cfg(test)]
// The tests read the committed corpora (the functions above read nothing).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn corpus(name: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("fuzz/corpus/{name}: {e}"))
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        out.sort();
        out
    }

    /// Every committed seed (and every regression input kept from a crash)
    /// runs through its target.
    #[test]
    fn every_target_takes_its_corpus() {
        for (name, target) in TARGETS {
            let seeds = corpus(name);
            assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
            for s in seeds {
                target(&s);
            }
        }
    }

    /// A fuzz binary for every target, and the reverse.
    #[test]
    fn every_target_has_a_fuzz_binary() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        files.sort();
        let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(files, names);
    }

    proptest! {
        #![proptest_config(crate::hostile::config(64))]
        /// Bounded mutations of each target's seeds: the stable stand-in
        /// for the libFuzzer runs.
        #[test]
        fn mutated_seeds_never_panic(i in 0usize..1000, seed in 0usize..1000, bytes in crate::hostile::bytes(64)) {
            let (name, target) = TARGETS[i % TARGETS.len()];
            let seeds = corpus(name);
            let mut input = seeds[seed % seeds.len()].clone();
            // Overwrite, insert and cut at places the random bytes choose.
            for (k, b) in bytes.iter().enumerate() {
                if input.is_empty() {
                    input.push(*b);
                    continue;
                }
                let at = (usize::from(*b) * 7919 + k * 104729) % input.len();
                match k % 3 {
                    0 => input[at] = *b,
                    1 => input.insert(at, *b),
                    _ => input.truncate(at.max(1)),
                }
            }
            target(&input);
        }
    }
}
