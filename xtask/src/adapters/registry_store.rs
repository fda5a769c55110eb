//! Where images and their evidence go: a registry ([`RegistryStore`]) or
//! the embedded local store ([`crate::adapters::local_store::LocalStore`]). The release
//! lane, `publish`, `verify`, `promote` and `audit` speak to both through the
//! [`Store`] trait.

use anyhow::{Context, Result, bail};

use crate::adapters::registry::{self, Mount, RegistryTarget, Remote};
use crate::report::Reporter;
use lane_core::distribution::BuiltImage;
use lane_core::distribution::{BlobStats, PublishReport};
use lane_core::evidence::{self, Artifact, MEDIA_INDEX, MEDIA_MANIFEST};
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
        let local = crate::adapters::layout::read_image(&image.name, &image.layout)?;
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
        let tag = evidence::fallback_tag(subject_digest);
        let existing = remote.fetch_manifest(&repo, &tag, MEDIA_INDEX)?;
        let index = evidence::add_referrer(existing.as_deref(), artifact)?;
        remote.put_manifest_read_back(
            &repo,
            &tag,
            MEDIA_INDEX,
            &index.bytes,
            "the referrers index",
        )?;
        Ok(d.to_string())
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
        remote.put_manifest_read_back(&repo, tag, MEDIA_MANIFEST, &bytes, "the tag")
    }

    fn resolve_tag(&mut self, repository: &str, tag: &str) -> Result<Option<String>> {
        let remote = self.remote()?;
        let repo = remote.repo(repository);
        Ok(remote
            .fetch_manifest(&repo, tag, MEDIA_MANIFEST)?
            .map(|b| sha256(&b).to_string()))
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

    fn copy_to(
        &mut self,
        repository: &str,
        digest: &str,
        to_repository: &str,
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
        let (from, to) = (remote.repo(repository), remote.repo(to_repository));
        for CopyItem {
            digest: m,
            bytes,
            blobs,
        } in &manifests
        {
            for b in blobs {
                if remote.blob_size(&to, b)?.is_some() {
                    stats.skipped += 1;
                    continue;
                }
                // Same registry: the registry links the blob it holds.
                match remote.mount_blob(&to, &from, b)? {
                    Mount::Mounted => {
                        progress.say(format_args!("  mounted {} from {from}", registry::short(b)));
                        stats.mounted += 1;
                    }
                    Mount::NotMounted(why) => {
                        // Through memory: images of this lane are small.
                        progress.say(format_args!(
                            "  copying {} from {from} ({why})",
                            registry::short(b)
                        ));
                        let data = remote.fetch_blob(&from, b)?;
                        remote.push_small_blob(&to, b, &data)?;
                        stats.uploaded += 1;
                        stats.bytes_uploaded += data.len() as u64;
                    }
                }
            }
            let reported = remote.put_manifest(&to, m, MEDIA_MANIFEST, bytes)?;
            if let Some(h) = reported.filter(|h| h != m) {
                bail!("the registry reported {h} for {to}@{m}");
            }
        }
        if attached.is_empty() {
            return Ok(stats);
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
        remote.put_manifest_read_back(
            &to,
            &tag,
            MEDIA_INDEX,
            &index.bytes,
            "the referrers index",
        )?;
        Ok(stats)
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
