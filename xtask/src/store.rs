//! Where images and their evidence go: a registry ([`RegistryStore`]) or
//! the embedded local store ([`crate::local_store::LocalStore`]). The release
//! lane, `publish`, `verify`, `promote` and `audit` speak to both through the
//! [`Store`] trait.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::build::BuiltImage;
use crate::evidence::{self, Artifact, MEDIA_INDEX, MEDIA_MANIFEST};
use crate::layer::sha256;
use crate::publish::{BlobStats, LocalImage, PublishReport};
use crate::registry::{self, RegistryTarget, Remote};

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
    /// Moves no tag other than the referrers fallback tag.
    fn copy_to(&mut self, repository: &str, digest: &str, to_repository: &str) -> Result<()>;
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

/// A registry that passed (or will pass) the preflight.
pub struct RegistryStore {
    target: RegistryTarget,
    remote: Option<Remote>,
    quiet: bool,
}

impl RegistryStore {
    pub fn new(target: RegistryTarget, quiet: bool) -> RegistryStore {
        RegistryStore {
            target,
            remote: None,
            quiet,
        }
    }

    fn remote(&mut self) -> Result<&Remote> {
        if self.remote.is_none() {
            self.remote = Some(registry::preflight(&self.target, &[])?);
        }
        Ok(self.remote.as_ref().expect("set above"))
    }
}

impl Store for RegistryStore {
    fn describe(&self) -> String {
        format!("registry {}", self.target)
    }

    fn is_registry(&self) -> bool {
        true
    }

    fn subject_name(&self, repository: &str) -> String {
        format!(
            "{}/{}",
            self.target.host(),
            self.target.repository(repository)
        )
    }

    fn preflight(&mut self, repositories: &[String]) -> Result<()> {
        let repos: Vec<String> = repositories
            .iter()
            .map(|r| self.target.repository(r))
            .collect();
        self.remote = Some(registry::preflight(&self.target, &repos)?);
        Ok(())
    }

    fn publish_candidate(&mut self, image: &BuiltImage) -> Result<Published> {
        let local = LocalImage::read(&image.name, &image.layout)?;
        let quiet = self.quiet;
        let remote = self.remote()?;
        let repo = remote.repo(&image.repository);
        Ok(match remote.publish(&local, &repo, &[], quiet) {
            Ok(report) => published(report, local.manifest.len() as u64),
            Err(e) => Published {
                ok: false,
                digest: local.manifest_digest.clone(),
                manifest_size: local.manifest.len() as u64,
                failures: vec![format!("{e:#}")],
                blobs: BlobStats::default(),
                detail: serde_json::Value::Null,
            },
        })
    }

    fn attach(
        &mut self,
        repository: &str,
        subject_digest: &str,
        artifact: &Artifact,
    ) -> Result<String> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        for (_, b) in &artifact.blobs {
            remote.push_small_blob(&repo, &b.digest, &b.bytes)?;
        }
        let d = &artifact.manifest.digest;
        // Read back and hash: a registry's digest header is not trusted.
        remote.put_manifest(&repo, d, MEDIA_MANIFEST, &artifact.manifest.bytes)?;
        let back = remote
            .fetch_manifest(&repo, d, MEDIA_MANIFEST)?
            .unwrap_or_default();
        if sha256(&back) != *d {
            bail!("the evidence manifest {repo}@{d} reads back with other bytes");
        }
        // Referrers tag fallback (the Distribution registry has no referrers API).
        let tag = evidence::fallback_tag(subject_digest);
        let existing = remote.fetch_manifest(&repo, &tag, MEDIA_INDEX)?;
        let index = evidence::add_referrer(existing.as_deref(), artifact)?;
        remote.put_manifest(&repo, &tag, MEDIA_INDEX, &index.bytes)?;
        let back = remote
            .fetch_manifest(&repo, &tag, MEDIA_INDEX)?
            .unwrap_or_default();
        if sha256(&back) != index.digest {
            bail!("the referrers index {repo}:{tag} reads back differently from what was pushed");
        }
        Ok(d.clone())
    }

    fn tag(&mut self, repository: &str, digest: &str, tag: &str) -> Result<()> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        let bytes = remote
            .fetch_manifest(&repo, digest, MEDIA_MANIFEST)?
            .with_context(|| format!("{repo}@{digest} is not in the registry"))?;
        if sha256(&bytes) != digest {
            bail!("{repo}@{digest} is served with other bytes; not tagging");
        }
        remote.put_manifest(&repo, tag, MEDIA_MANIFEST, &bytes)?;
        let back = remote
            .fetch_manifest(&repo, tag, MEDIA_MANIFEST)?
            .unwrap_or_default();
        let got = sha256(&back);
        if got != digest {
            bail!("tag {repo}:{tag} reads back as {got}, not {digest}");
        }
        Ok(())
    }

    fn resolve_tag(&mut self, repository: &str, tag: &str) -> Result<Option<String>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        Ok(remote
            .fetch_manifest(&repo, tag, MEDIA_MANIFEST)?
            .map(|b| sha256(&b)))
    }

    fn manifest(&mut self, repository: &str, reference: &str) -> Result<Option<Vec<u8>>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        let accept = if reference.starts_with("sha256-") {
            MEDIA_INDEX
        } else {
            MEDIA_MANIFEST
        };
        remote.fetch_manifest(&repo, reference, accept)
    }

    fn blob(&mut self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        remote.fetch_blob(&repo, digest)
    }

    fn copy_to(&mut self, repository: &str, digest: &str, to_repository: &str) -> Result<()> {
        if repository == to_repository {
            return Ok(());
        }
        let CopyPlan {
            manifests,
            referrers: attached,
        } = copy_plan(self, repository, digest)?;
        let remote = self.remote()?;
        let (from, to) = (remote.repo(repository), remote.repo(to_repository));
        for CopyItem {
            digest: m,
            bytes,
            blobs,
        } in &manifests
        {
            for b in blobs {
                // Whole blobs in memory: images of this lane are small; a
                // cross-repository mount would avoid the copy.
                let data = remote.fetch_blob(&from, b)?;
                remote.push_small_blob(&to, b, &data)?;
            }
            let reported = remote.put_manifest(&to, m, MEDIA_MANIFEST, bytes)?;
            if let Some(h) = reported.filter(|h| h != m) {
                bail!("the registry reported {h} for {to}@{m}");
            }
        }
        if attached.is_empty() {
            return Ok(());
        }
        let tag = evidence::fallback_tag(digest);
        let existing = match remote.fetch_manifest(&to, &tag, MEDIA_INDEX)? {
            Some(b) => serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v["manifests"].as_array().cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let index = merged_referrers(existing, attached)?;
        remote.put_manifest(&to, &tag, MEDIA_INDEX, &index.bytes)?;
        let back = remote
            .fetch_manifest(&to, &tag, MEDIA_INDEX)?
            .unwrap_or_default();
        if sha256(&back) != index.digest {
            bail!("the referrers index {to}:{tag} reads back differently from what was pushed");
        }
        Ok(())
    }

    fn list_tags(&mut self, repository: &str) -> Result<Vec<String>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        remote.list_tags(&repo)
    }
}

fn published(report: PublishReport, manifest_size: u64) -> Published {
    Published {
        ok: report.cross_check.ok,
        digest: report.digest.clone(),
        manifest_size,
        failures: Vec::new(),
        blobs: report.blobs.clone(),
        detail: serde_json::to_value(&report.cross_check).unwrap_or_default(),
    }
}
