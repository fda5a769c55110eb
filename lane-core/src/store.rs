//! Where images and their evidence go, as one trait: a registry or the
//! embedded local store (both implemented in xtask's adapters). The release
//! lane, `publish`, `verify`, `promote` and `audit` speak to both through
//! [`Store`]. The copy plan and referrers rules are pure functions over it.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::distribution::{BlobStats, BuiltImage};
use crate::evidence::{self, Artifact, MEDIA_INDEX};
use crate::layer::sha256;

/// An image pushed by digest and cross-checked (no tag moved).
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Every identity check held.
    pub ok: bool,
    pub digest: String,
    pub manifest_size: u64,
    /// Each failed check, in words; empty when `ok`.
    pub failures: Vec<String>,
    pub blobs: BlobStats,
    /// The store's own account (headers seen, hashes computed).
    pub detail: serde_json::Value,
}

pub trait Store {
    /// Names the store in messages (`registry 127.0.0.1:5000`, `local store DIR`).
    fn describe(&self) -> String;
    /// True for a real registry (the release tag then needs an authoritative builder).
    fn is_registry(&self) -> bool;
    /// `HOST[:PORT]/[PREFIX/]REPOSITORY`: the subject name in statements.
    fn subject_name(&self, repository: &str) -> String;
    /// Checks, before any build work, that pushing to these repositories will work.
    fn preflight(&mut self, repositories: &[String]) -> Result<()>;
    /// Pushes an image by digest, without a tag, and cross-checks what the
    /// store holds. A failed identity check is `ok: false`, not an error.
    fn publish_candidate(&mut self, image: &BuiltImage) -> Result<Published>;
    /// Pushes an artifact (blobs, then manifest by digest) and adds it to the
    /// referrers of its subject. Returns the artifact manifest digest.
    fn attach(
        &mut self,
        repository: &str,
        subject_digest: &str,
        artifact: &Artifact,
    ) -> Result<String>;
    /// Points `tag` at `digest` and reads it back.
    fn tag(&mut self, repository: &str, digest: &str, tag: &str) -> Result<()>;
    /// What `tag` points at now.
    fn resolve_tag(&mut self, repository: &str, tag: &str) -> Result<Option<String>>;
    /// A manifest's (or index's) bytes by digest or tag, `None` when absent.
    fn manifest(&mut self, repository: &str, reference: &str) -> Result<Option<Vec<u8>>>;
    /// A blob's bytes, checked against its digest.
    fn blob(&mut self, repository: &str, digest: &str) -> Result<Vec<u8>>;
    /// Copies the image manifest `digest`, every blob it names, and every
    /// artifact attached to it (with the referrers index) from `repository`
    /// to `to_repository`, byte for byte and by digest (`promote --to`).
    /// Moves no tag other than the referrers fallback tag. Returns how the
    /// blobs got there: already present (`skipped`), mounted by the
    /// registry (`mounted`), or copied (`uploaded`, `bytes_uploaded`).
    fn copy_to(&mut self, repository: &str, digest: &str, to_repository: &str)
    -> Result<BlobStats>;
    /// Every tag of the repository (including `sha256-<hex>` fallback tags),
    /// sorted; empty for a repository that does not exist.
    fn list_tags(&mut self, repository: &str) -> Result<Vec<String>>;
}

/// One manifest to copy, with the blobs it names (config and layers).
pub struct CopyItem {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub blobs: Vec<String>,
}

/// What `promote --to` copies: the image, then each artifact attached to
/// it; and the referrers index entries of those artifacts.
pub struct CopyPlan {
    pub manifests: Vec<CopyItem>,
    pub referrers: Vec<serde_json::Value>,
}

/// Reads the image `digest` and its attached artifacts for a copy.
pub fn copy_plan(store: &mut dyn Store, repository: &str, digest: &str) -> Result<CopyPlan> {
    let attached = referrers(store, repository, digest)?;
    let mut digests = vec![digest.to_string()];
    digests.extend(
        attached
            .iter()
            .filter_map(|r| r["digest"].as_str().map(str::to_string)),
    );
    let mut out = Vec::new();
    for m in digests {
        let bytes = store
            .manifest(repository, &m)?
            .with_context(|| format!("{repository}@{m} is not in {}", store.describe()))?;
        if sha256(&bytes) != m {
            bail!("{repository}@{m} is served with other bytes; not copying");
        }
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{repository}@{m} is not a JSON manifest"))?;
        let mut blobs: Vec<String> = Vec::new();
        blobs.extend(doc["config"]["digest"].as_str().map(str::to_string));
        for l in doc["layers"].as_array().into_iter().flatten() {
            blobs.extend(l["digest"].as_str().map(str::to_string));
        }
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
    repository: &str,
    subject: &str,
) -> Result<Vec<serde_json::Value>> {
    let Some(bytes) = store.manifest(repository, &evidence::fallback_tag(subject))? else {
        return Ok(Vec::new());
    };
    let index: serde_json::Value =
        serde_json::from_slice(&bytes).context("the referrers index is not JSON")?;
    Ok(index["manifests"].as_array().cloned().unwrap_or_default())
}
