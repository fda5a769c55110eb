//! Where images and their evidence go: a registry ([`RegistryStore`]) or
//! the embedded local store ([`crate::adapters::local_store::LocalStore`]). The release
//! lane, `publish`, `verify`, `promote` and `audit` speak to both through the
//! [`Store`] trait.

use anyhow::{Context, Result, bail};

use crate::adapters::registry::{self, Mount, RegistryTarget, Remote};
use crate::report::Reporter;
use lane_core::distribution::BuiltImage;
use lane_core::distribution::{
    BlobStats, CrossCheck, PublishReport, TagCheck, check_tag, tag_refusal,
};
use lane_core::evidence::{self, Artifact, MEDIA_INDEX, MEDIA_MANIFEST};
use lane_core::id::{Digest, Repository, Tag, Target};
use lane_core::layer::sha256;
use lane_core::store::CopyItem;
use lane_core::store::CopyPlan;
use lane_core::store::Published;
use lane_core::store::Store;
use lane_core::store::copy_plan;
use lane_core::store::merged_referrers;

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
        Ok(match remote.publish(&local, &repo, &[], quiet) {
            Ok(report) => published(report, local.manifest.len() as u64),
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

    fn attach(
        &mut self,
        repository: &Repository,
        subject: &Digest,
        artifact: &Artifact,
    ) -> Result<Digest> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        for (_, b) in &artifact.blobs {
            remote.push_small_blob(&repo, b.digest.as_str(), &b.bytes)?;
        }
        let d = &artifact.manifest.digest;
        remote.put_manifest_read_back(
            &repo,
            d.as_str(),
            MEDIA_MANIFEST,
            &artifact.manifest.bytes,
            "the evidence manifest",
        )?;
        // Referrers tag fallback (the Distribution registry has no referrers API).
        let tag = subject.fallback_tag();
        let existing = remote.fetch_manifest(&repo, tag.as_str(), MEDIA_INDEX)?;
        let index = evidence::add_referrer(existing.as_deref(), artifact)?;
        remote.put_manifest_read_back(
            &repo,
            tag.as_str(),
            MEDIA_INDEX,
            &index.bytes,
            "the referrers index",
        )?;
        Ok(d.clone())
    }

    fn tag(&mut self, repository: &Repository, digest: &Digest, tag: &Tag) -> Result<()> {
        let remote = self.remote()?;
        let repo = remote.repo(repository.as_str());
        let bytes = remote
            .fetch_manifest(&repo, digest.as_str(), MEDIA_MANIFEST)?
            .with_context(|| format!("{repo}@{digest} is not in the registry"))?;
        if !digest.matches(&bytes) {
            bail!("{repo}@{digest} is served with other bytes; not tagging");
        }
        let pushed = remote.put_manifest(&repo, tag.as_str(), MEDIA_MANIFEST, &bytes)?;
        let back = remote
            .fetch_manifest(&repo, tag.as_str(), MEDIA_MANIFEST)?
            .unwrap_or_default();
        let check = TagCheck {
            tag: tag.to_string(),
            pushed_digest_header: pushed,
            fetched_digest_header: None,
            resolved_sha256: sha256(&back).to_string(),
        };
        let failures = check_tag(digest, &check);
        if !failures.is_empty() {
            bail!(
                "{}",
                tag_refusal(
                    &format!("{}/{repo}:{tag}", self.target.host()),
                    digest,
                    &failures
                )
            );
        }
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
        remote.fetch_blob(&repo, digest.as_str())
    }

    fn copy_to(
        &mut self,
        repository: &Repository,
        digest: &Digest,
        to_repository: &Repository,
    ) -> Result<BlobStats> {
        let mut stats = BlobStats::default();
        if repository == to_repository {
            return Ok(stats);
        }
        let CopyPlan {
            manifests,
            referrers: attached,
        } = copy_plan(self, repository, digest)?;
        let progress = Reporter::new(self.quiet);
        let remote = self.remote()?;
        let (from, to) = (
            remote.repo(repository.as_str()),
            remote.repo(to_repository.as_str()),
        );
        for CopyItem {
            digest: m,
            bytes,
            blobs,
        } in &manifests
        {
            for b in blobs {
                if remote.blob_size(&to, b.as_str())?.is_some() {
                    stats.skipped += 1;
                    continue;
                }
                // Same registry: the registry links the blob it holds.
                match remote.mount_blob(&to, &from, b.as_str())? {
                    Mount::Mounted => {
                        progress.say(format_args!("  mounted {} from {from}", b.short()));
                        stats.mounted += 1;
                    }
                    Mount::NotMounted(why) => {
                        // Through memory: images of this lane are small.
                        progress.say(format_args!("  copying {} from {from} ({why})", b.short()));
                        let data = remote.fetch_blob(&from, b.as_str())?;
                        remote.push_small_blob(&to, b.as_str(), &data)?;
                        stats.uploaded += 1;
                        stats.bytes_uploaded += data.len() as u64;
                    }
                }
            }
            let reported = remote.put_manifest(&to, m.as_str(), MEDIA_MANIFEST, bytes)?;
            if let Some(h) = reported.filter(|h| h != m) {
                bail!("the registry reported {h} for {to}@{m}");
            }
        }
        if attached.is_empty() {
            return Ok(stats);
        }
        let tag = digest.fallback_tag();
        let existing = match remote.fetch_manifest(&to, tag.as_str(), MEDIA_INDEX)? {
            Some(b) => serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v["manifests"].as_array().cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let index = merged_referrers(existing, attached)?;
        remote.put_manifest_read_back(
            &to,
            tag.as_str(),
            MEDIA_INDEX,
            &index.bytes,
            "the referrers index",
        )?;
        Ok(stats)
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
