//! Where images and their evidence go: a registry ([`RegistryStore`]) or
//! the embedded local store ([`crate::adapters::local_store::LocalStore`]). The release
//! lane, `publish`, `verify`, `promote` and `audit` speak to both through the
//! [`Store`] trait.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

use crate::adapters::registry::{self, ManifestPut, Mount, RegistryTarget, Remote};
use crate::report::Reporter;
use lane_core::distribution::BuiltImage;
use lane_core::distribution::{BlobStats, CrossCheck, PublishReport};
use lane_core::evidence::{MEDIA_INDEX, MEDIA_MANIFEST};
use lane_core::id::{Digest, Repository, Tag, Target};
use lane_core::layer::sha256;
use lane_core::oci::Blob;
use lane_core::store::BlobCopy;
use lane_core::store::Published;
use lane_core::store::Store;

/// A registry that passed (or will pass) the preflight.
pub struct RegistryStore {
    target: RegistryTarget,
    remote: Option<Remote>,
    quiet: bool,
    /// Manifests this store published and cross-checked in this run (by
    /// repository and digest): tagging one sends the bytes it read back,
    /// without fetching them again.
    checked: BTreeMap<(String, Digest), Vec<u8>>,
}

impl RegistryStore {
    pub fn new(target: RegistryTarget, quiet: bool) -> RegistryStore {
        RegistryStore {
            target,
            remote: None,
            quiet,
            checked: BTreeMap::new(),
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

    fn subject_name(&self, repository: &Repository) -> String {
        format!(
            "{}/{}",
            self.target.host(),
            self.target.repository(repository.as_str())
        )
    }

    fn preflight(&mut self, repositories: &[Repository]) -> Result<()> {
        let repos: Vec<String> = repositories
            .iter()
            .map(|r| self.target.repository(r.as_str()))
            .collect();
        self.remote = Some(registry::preflight(&self.target, &repos)?);
        Ok(())
    }

    fn publish_candidate(&mut self, image: &BuiltImage) -> Result<Published> {
        let local = crate::adapters::layout::Layout::at(&image.name, &image.layout).image()?;
        let quiet = self.quiet;
        let remote = self.remote()?;
        let repo = remote.repo(image.repository.as_str());
        Ok(match remote.publish(&local, &repo, quiet) {
            Ok(report) => {
                if report.cross_check.ok {
                    self.checked.insert(
                        (repo, local.manifest_digest.clone()),
                        local.manifest.clone(),
                    );
                }
                published(report, local.manifest.len() as u64)
            }
            Err(e) => Published {
                ok: false,
                digest: local.manifest_digest.clone(),
                manifest_size: local.manifest.len() as u64,
                failures: vec![format!("{e:#}")],
                blobs: BlobStats::default(),
                cross_check: CrossCheck {
                    ok: false,
                    pushed_digest_header: None,
                    fetched_digest_header: None,
                    fetched_sha256: String::new(),
                    blobs_verified: 0,
                    tags: Vec::new(),
                },
            },
        })
    }

    fn put_blob(&mut self, repository: &Repository, blob: &Blob) -> Result<()> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        remote.push_small_blob(&repo, blob.digest.as_str(), &blob.bytes)
    }

    fn tag(&mut self, repository: &Repository, digest: &Digest, tag: &Tag) -> Result<()> {
        let repo = self.remote()?.repo(repository.as_str());
        let known = self.checked.get(&(repo.clone(), digest.clone())).cloned();
        let remote = self.remote()?;
        let bytes = match known {
            Some(bytes) => bytes,
            None => {
                let bytes = remote
                    .fetch_manifest(&repo, digest.as_str(), MEDIA_MANIFEST)?
                    .with_context(|| format!("{repo}@{digest} is not in the registry"))?;
                if !digest.matches(&bytes) {
                    bail!("{repo}@{digest} is served with other bytes; not tagging");
                }
                bytes
            }
        };
        remote.tag_read_back(&repo, tag, digest, &bytes)?;
        Ok(())
    }

    fn resolve_tag(&mut self, repository: &Repository, tag: &Tag) -> Result<Option<Digest>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        Ok(remote
            .fetch_manifest(&repo, tag.as_str(), MEDIA_MANIFEST)?
            .map(|b| sha256(&b)))
    }

    fn manifest(&mut self, repository: &Repository, reference: &Target) -> Result<Option<Vec<u8>>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        let (reference, accept) = match reference {
            Target::Digest(d) => (d.as_str(), MEDIA_MANIFEST),
            // The referrers fallback tag names an index.
            Target::Tag(t) if t.as_str().starts_with("sha256-") => (t.as_str(), MEDIA_INDEX),
            Target::Tag(t) => (t.as_str(), MEDIA_MANIFEST),
        };
        remote.fetch_manifest(&repo, reference, accept)
    }

    fn blob(&mut self, repository: &Repository, digest: &Digest) -> Result<Vec<u8>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        remote.fetch_blob(&repo, digest.as_str(), lane_core::oci::MAX_DOCUMENT_BYTES)
    }

    fn copy_blob(&mut self, from: &Repository, to: &Repository, blob: &Digest) -> Result<BlobCopy> {
        let progress = Reporter::new(self.quiet);
        let remote = self.remote()?;
        let (from, to) = (remote.repo(from.as_str()), remote.repo(to.as_str()));
        if remote.blob_size(&to, blob.as_str())?.is_some() {
            return Ok(BlobCopy::Present);
        }
        // Same registry: the registry links the blob it holds.
        Ok(match remote.mount_blob(&to, &from, blob.as_str())? {
            Mount::Mounted => {
                progress.say(format_args!("  mounted {} from {from}", blob.short()));
                BlobCopy::Mounted
            }
            Mount::NotMounted(why) => {
                // Through memory: images of this lane are small.
                progress.say(format_args!(
                    "  copying {} from {from} ({why})",
                    blob.short()
                ));
                let data =
                    remote.fetch_blob(&from, blob.as_str(), lane_core::oci::MAX_LAYER_BYTES)?;
                remote.push_small_blob(&to, blob.as_str(), &data)?;
                BlobCopy::Uploaded(data.len() as u64)
            }
        })
    }

    fn put_manifest(&mut self, repo: &Repository, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let repository = repo;
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        let put = ManifestPut {
            repo: &repo,
            reference: digest.as_str(),
            media_type: MEDIA_MANIFEST,
            bytes,
        };
        remote.put_manifest_read_back(&put, "the manifest")
    }

    fn put_referrers(&mut self, repo: &Repository, subject: &Digest, index: &Blob) -> Result<()> {
        let repository = repo;
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        let tag = subject.fallback_tag();
        let put = ManifestPut {
            repo: &repo,
            reference: tag.as_str(),
            media_type: MEDIA_INDEX,
            bytes: &index.bytes,
        };
        remote.put_manifest_read_back(&put, "the referrers index")
    }

    fn list_tags(&mut self, repository: &Repository) -> Result<Vec<String>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
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
        cross_check: report.cross_check,
    }
}
