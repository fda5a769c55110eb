//! Where images and their evidence go, as one trait: a registry or the
//! embedded local store (both implemented in xtask's adapters). The release
//! lane, `publish`, `verify`, `promote` and `audit` speak to both through
//! [`Store`]. The copy plan and referrers rules are pure functions over it.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::distribution::{BlobStats, BuiltImage, CrossCheck};
use crate::evidence::{self, Artifact, MEDIA_INDEX};
use crate::id::{Digest, Repository, Tag, Target};
use crate::oci::Blob;

/// An image pushed by digest and cross-checked (no tag moved).
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Every identity check held.
    pub ok: bool,
    pub digest: Digest,
    pub manifest_size: u64,
    /// Each failed check, in words; empty when `ok`.
    pub failures: Vec<String>,
    pub blobs: BlobStats,
    /// The store's own account: headers seen, hashes computed (its `tags`
    /// stay empty: no tag moves here).
    pub cross_check: CrossCheck,
}

pub trait Store {
    /// Names the store in messages (`registry 127.0.0.1:5000`, `local store DIR`).
    fn describe(&self) -> String;
    /// True for a real registry (the release tag then needs an authoritative builder).
    fn is_registry(&self) -> bool;
    /// `HOST[:PORT]/[PREFIX/]REPOSITORY`: the subject name in statements.
    fn subject_name(&self, repository: &Repository) -> String;
    /// Checks, before any build work, that pushing to these repositories will work.
    fn preflight(&mut self, repositories: &[Repository]) -> Result<()>;
    /// Pushes an image by digest, without a tag, and cross-checks what the
    /// store holds. A failed identity check is `ok: false`, not an error.
    fn publish_candidate(&mut self, image: &BuiltImage) -> Result<Published>;
    /// Stores a blob (an artifact's content or config) under its digest.
    fn put_blob(&mut self, repository: &Repository, blob: &Blob) -> Result<()>;
    /// Points `tag` at `digest` and reads it back.
    fn tag(&mut self, repository: &Repository, digest: &Digest, tag: &Tag) -> Result<()>;
    /// What `tag` points at now.
    fn resolve_tag(&mut self, repository: &Repository, tag: &Tag) -> Result<Option<Digest>>;
    /// A manifest's (or index's) bytes by digest or tag, `None` when absent.
    fn manifest(&mut self, repository: &Repository, reference: &Target) -> Result<Option<Vec<u8>>>;
    /// A blob's bytes, checked against its digest.
    fn blob(&mut self, repository: &Repository, digest: &Digest) -> Result<Vec<u8>>;
    /// Makes the blob `digest` of `from` present in `to` (a repository of
    /// the same store): already there, mounted by a registry, or copied.
    fn copy_blob(&mut self, from: &Repository, to: &Repository, blob: &Digest) -> Result<BlobCopy>;
    /// Stores a manifest's exact bytes under its digest (no tag moves) and
    /// reads them back.
    fn put_manifest(
        &mut self,
        repository: &Repository,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<()>;
    /// Points the referrers fallback tag of `subject` at `index` (pushed,
    /// read back): the only tag the lane moves besides release tags.
    fn put_referrers(
        &mut self,
        repository: &Repository,
        subject: &Digest,
        index: &Blob,
    ) -> Result<()>;
    /// Every tag of the repository (including `sha256-<hex>` fallback tags),
    /// sorted; empty for a repository that does not exist.
    fn list_tags(&mut self, repository: &Repository) -> Result<Vec<String>>;
}

/// How one blob got into the target repository of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCopy {
    /// It was there already.
    Present,
    /// The registry linked the blob it holds (cross-repository mount).
    Mounted,
    /// Its bytes were copied (this many).
    Uploaded(u64),
}

/// Pushes `artifact` (its blobs, then its manifest by digest) and adds it
/// to the referrers index of `subject` (the `sha256-<hex>` fallback tag, as
/// for a registry without the referrers API). Returns the artifact's digest.
pub fn attach(
    store: &mut dyn Store,
    repository: &Repository,
    subject: &Digest,
    artifact: &Artifact,
) -> Result<Digest> {
    for (_, b) in &artifact.blobs {
        store.put_blob(repository, b)?;
    }
    let d = &artifact.manifest.digest;
    store.put_manifest(repository, d, &artifact.manifest.bytes)?;
    // The fallback tag is a read-modify-write and a registry has no
    // compare-and-swap: another run attaching to the same subject at the
    // same moment can replace the index between our read and our write.
    // Read it back; if our entry is gone, merge again (a few times).
    for _ in 0..ATTACH_ATTEMPTS {
        let existing = store.manifest(repository, &Target::Tag(subject.fallback_tag()))?;
        let index = evidence::add_referrer(existing.as_deref(), artifact)?;
        store.put_referrers(repository, subject, &index)?;
        if referrers(store, repository, subject)?
            .iter()
            .any(|r| r["digest"] == d.as_str())
        {
            return Ok(d.clone());
        }
    }
    bail!(
        "the referrers index of {repository}@{subject} in {} lost {d} {ATTACH_ATTEMPTS} times: another writer keeps replacing it; run again",
        store.describe()
    )
}

/// How often [`attach`] writes the referrers index before it gives up.
pub const ATTACH_ATTEMPTS: usize = 5;

/// `promote --to`: copies the image manifest `digest`, every blob it names,
/// and every artifact attached to it (with the referrers index) from
/// `repository` to `to`, byte for byte and by digest. Moves no tag other
/// than the referrers fallback tag. Returns how the blobs got there.
pub fn copy(
    store: &mut dyn Store,
    repository: &Repository,
    digest: &Digest,
    to: &Repository,
) -> Result<BlobStats> {
    let mut stats = BlobStats::default();
    if repository == to {
        return Ok(stats);
    }
    let CopyPlan {
        manifests,
        referrers: attached,
    } = copy_plan(store, repository, digest)?;
    for item in &manifests {
        for b in &item.blobs {
            match store.copy_blob(repository, to, b)? {
                BlobCopy::Present => stats.skipped += 1,
                BlobCopy::Mounted => stats.mounted += 1,
                BlobCopy::Uploaded(n) => {
                    stats.uploaded += 1;
                    stats.bytes_uploaded += n;
                }
            }
        }
        store.put_manifest(to, &item.digest, &item.bytes)?;
    }
    if !attached.is_empty() {
        let existing = referrers(store, to, digest)?;
        let index = merged_referrers(existing, attached)?;
        store.put_referrers(to, digest, &index)?;
    }
    Ok(stats)
}

/// One manifest to copy, with the blobs it names (config and layers).
pub struct CopyItem {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub blobs: Vec<Digest>,
}

/// What `promote --to` copies: the image, then each artifact attached to
/// it; and the referrers index entries of those artifacts.
pub struct CopyPlan {
    pub manifests: Vec<CopyItem>,
    pub referrers: Vec<serde_json::Value>,
}

/// Reads the image `digest` and its attached artifacts for a copy. Every
/// digest read from a referrers index or a manifest is parsed before use.
pub fn copy_plan(
    store: &mut dyn Store,
    repository: &Repository,
    digest: &Digest,
) -> Result<CopyPlan> {
    let attached = referrers(store, repository, digest)?;
    let mut digests = vec![digest.clone()];
    for r in &attached {
        digests.push(parse_digest(&r["digest"], "a referrers index entry")?);
    }
    let mut out = Vec::new();
    for m in digests {
        let bytes = store
            .manifest(repository, &Target::Digest(m.clone()))?
            .with_context(|| format!("{repository}@{m} is not in {}", store.describe()))?;
        if !m.matches(&bytes) {
            bail!("{repository}@{m} is served with other bytes; not copying");
        }
        let blobs = manifest_blobs(&format!("{repository}@{m}"), &bytes)?;
        out.push(CopyItem {
            digest: m,
            bytes,
            blobs,
        });
    }
    Ok(CopyPlan {
        manifests: out,
        referrers: attached,
    })
}

/// A digest found in a document read from a store, parsed by the one parser.
pub fn parse_digest(v: &serde_json::Value, what: &str) -> Result<Digest> {
    v.as_str()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{what} names no valid digest"))
}

/// The referrers index of the target: its own entries plus `attached`.
pub fn merged_referrers(
    existing: Vec<serde_json::Value>,
    attached: Vec<serde_json::Value>,
) -> Result<crate::oci::Blob> {
    let mut merged = existing;
    for r in attached {
        if !merged.iter().any(|m| m["digest"] == r["digest"]) {
            merged.push(r);
        }
    }
    crate::oci::canonical_json(
        &serde_json::json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": merged }),
    )
}

/// The referrers of `subject` listed by the fallback tag index.
pub fn referrers(
    store: &mut dyn Store,
    repository: &Repository,
    subject: &Digest,
) -> Result<Vec<serde_json::Value>> {
    let Some(bytes) = store.manifest(repository, &Target::Tag(subject.fallback_tag()))? else {
        return Ok(Vec::new());
    };
    parse_referrers(&bytes)
}

/// The entries of a referrers index read from a store (at most
/// [`crate::oci::MAX_MANIFEST_BYTES`]); every entry's digest is still to be
/// parsed by its user ([`parse_digest`]).
pub fn parse_referrers(bytes: &[u8]) -> Result<Vec<serde_json::Value>> {
    crate::oci::check_size(
        "the referrers index",
        bytes.len() as u64,
        crate::oci::MAX_MANIFEST_BYTES,
    )?;
    let index: serde_json::Value =
        serde_json::from_slice(bytes).context("the referrers index is not JSON")?;
    Ok(index["manifests"].as_array().cloned().unwrap_or_default())
}

/// The blobs a manifest read from a store names (config, then layers),
/// each digest parsed.
pub fn manifest_blobs(what: &str, bytes: &[u8]) -> Result<Vec<Digest>> {
    crate::oci::check_size(what, bytes.len() as u64, crate::oci::MAX_MANIFEST_BYTES)?;
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("{what} is not a JSON manifest"))?;
    let mut blobs = vec![parse_digest(
        &doc["config"]["digest"],
        "the manifest's config",
    )?];
    for l in doc["layers"].as_array().into_iter().flatten() {
        blobs.push(parse_digest(&l["digest"], "a manifest layer")?);
    }
    Ok(blobs)
}

/// Hostile documents from a store (docs/fault-matrix-parsers.md): referrers indexes and
/// manifests, arbitrary, mutated and oversized. No panic; a digest that is
/// not one is refused before use.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated};
    use proptest::prelude::*;

    fn index() -> Vec<u8> {
        let d = crate::layer::sha256(b"artifact");
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_INDEX,
            "manifests": [{"mediaType": crate::evidence::MEDIA_MANIFEST, "digest": d, "size": 10,
                "artifactType": crate::evidence::MEDIA_DSSE, "annotations": {"a": "b"}}]
        }))
        .unwrap()
    }

    fn manifest() -> Vec<u8> {
        let d = |s: &[u8]| crate::layer::sha256(s);
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::evidence::MEDIA_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(b"c"), "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(b"l"), "size": 2}]
        }))
        .unwrap()
    }

    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        match parse_referrers(bytes) {
            Ok(entries) => {
                for e in &entries {
                    if let Ok(d) = parse_digest(&e["digest"], "an entry") {
                        prop_assert!(!d.blob_path().contains(".."));
                    }
                }
                let _ = merged_referrers(entries.clone(), entries);
            }
            Err(e) => hostile::clear_error(&e, "referrers index")?,
        }
        if let Err(e) = manifest_blobs("repo@digest", bytes) {
            hostile::clear_error(&e, "")?;
        }
        Ok(())
    }

    #[test]
    fn oversized_documents_are_refused_naming_the_cap() {
        let mut big = b"{\"manifests\": [".to_vec();
        big.resize(crate::oci::MAX_MANIFEST_BYTES as usize + 1, b' ');
        let e = parse_referrers(&big).unwrap_err().to_string();
        assert!(e.contains("more than the 4194304"), "{e}");
        let e = manifest_blobs("repo@x", &big).unwrap_err().to_string();
        assert!(
            e.contains("repo@x is 4194305 bytes, more than the 4194304"),
            "{e}"
        );
    }

    #[test]
    fn samples_parse() {
        assert_eq!(parse_referrers(&index()).unwrap().len(), 1);
        assert_eq!(manifest_blobs("m", &manifest()).unwrap().len(), 2);
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn store_documents_arbitrary(bytes in hostile::bytes(512)) {
            check(&bytes)?;
        }

        #[test]
        fn store_documents_mutated(bytes in prop_oneof![mutated(index()), mutated(manifest())]) {
            check(&bytes)?;
        }
    }
}
