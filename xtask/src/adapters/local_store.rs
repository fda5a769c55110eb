//! The embedded default store: one OCI image layout per repository under
//! `target/local-registry/<repository>/`, with blobs by digest, tags as
//! `org.opencontainers.image.ref.name` entries of `index.json`, untagged
//! candidates as entries without a name, and referrers under the
//! `sha256-<hex>` fallback tag, exactly as a registry without the referrers
//! API holds them. It gets the same cross-check as a registry: everything is
//! re-hashed from what was stored.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::adapters::cache::write_atomic;
use lane_core::distribution::BlobStats;
use lane_core::distribution::BuiltImage;
use lane_core::evidence::{self, Artifact, MEDIA_INDEX, MEDIA_MANIFEST};
use lane_core::id::{Digest, Repository};
use lane_core::layer::{HashReader, sha256};
use lane_core::oci::{ANNOTATION_REF_NAME, OCI_LAYOUT};
use lane_core::store::{
    CopyItem, CopyPlan, Published, Store, copy_plan, merged_referrers, referrers,
};

pub struct LocalStore {
    pub root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    /// The folder of `repository`; the name is parsed first, so it cannot
    /// leave the store (`..`, absolute paths and the like are refused).
    fn repo(&self, repository: &str) -> Result<PathBuf> {
        let r: Repository = repository
            .parse()
            .with_context(|| format!("local store {}", self.root.display()))?;
        Ok(self.root.join(r.as_str()))
    }

    /// Where `digest` is kept; the digest is parsed first, so no path is
    /// ever built from an unchecked string (a referrers index that names
    /// `sha256:../../x` is refused here).
    fn blob_path(&self, repository: &str, digest: &str) -> Result<PathBuf> {
        let d: Digest = digest
            .parse()
            .with_context(|| format!("local store {}/{repository}", self.root.display()))?;
        Ok(self.repo(repository)?.join(d.blob_path()))
    }

    fn index(&self, repository: &str) -> Result<Vec<Value>> {
        let path = self.repo(repository)?.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is damaged", path.display()))?;
                Ok(v["manifests"].as_array().cloned().unwrap_or_default())
            }
            Err(_) => Ok(Vec::new()),
        }
    }

    fn write_index(&self, repository: &str, manifests: Vec<Value>) -> Result<()> {
        let dir = self.repo(repository)?;
        write_atomic(&dir.join("oci-layout"), OCI_LAYOUT)?;
        let doc = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests });
        write_atomic(&dir.join("index.json"), &serde_json::to_vec(&doc)?)
    }

    /// Stores bytes under their digest; returns whether they were new.
    fn put(&self, repository: &str, digest: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.blob_path(repository, digest)?;
        if path.exists() {
            return Ok(false);
        }
        write_atomic(&path, bytes)?;
        Ok(true)
    }

    fn put_file(&self, repository: &str, digest: &str, from: &Path) -> Result<Option<u64>> {
        let path = self.blob_path(repository, digest)?;
        if path.exists() {
            return Ok(None);
        }
        fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        let tmp = crate::adapters::cache::temp_path(&path);
        fs::copy(from, &tmp)
            .with_context(|| format!("copying {} into the local store", from.display()))?;
        fs::rename(&tmp, &path)?;
        Ok(Some(fs::metadata(&path)?.len()))
    }

    fn add_entry(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        media: &str,
        tag: Option<&str>,
    ) -> Result<()> {
        let mut manifests = self.index(repository)?;
        match tag {
            Some(t) => manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME] != t),
            None => {
                if manifests.iter().any(|m| m["digest"] == digest) {
                    return Ok(());
                }
            }
        }
        let mut entry = json!({ "mediaType": media, "digest": digest, "size": size });
        if let Some(t) = tag {
            entry["annotations"] = json!({ ANNOTATION_REF_NAME: t });
        }
        manifests.push(entry);
        self.write_index(repository, manifests)
    }

    /// Reads a stored blob and checks it hashes to its name.
    pub fn read_verified(&self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        let bytes = fs::read(self.blob_path(repository, digest)?)
            .with_context(|| format!("{repository}@{digest} is not in the local store"))?;
        let actual = sha256(&bytes);
        if actual != digest {
            bail!(
                "local store blob {repository}@{digest} hashes to {actual}: the store is damaged"
            );
        }
        Ok(bytes)
    }
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut r = HashReader::new(fs::File::open(path)?);
    std::io::copy(&mut r, &mut std::io::sink())?;
    let (d, n) = r.finish();
    Ok((d.to_string(), n))
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local store {}", self.root.display())
    }

    fn is_registry(&self) -> bool {
        false
    }

    fn subject_name(&self, repository: &str) -> String {
        format!("local/{repository}")
    }

    fn preflight(&mut self, repositories: &[String]) -> Result<()> {
        for r in repositories {
            let dir = self.repo(r)?;
            fs::create_dir_all(dir.join("blobs/sha256"))
                .with_context(|| format!("local store {} is not writable", dir.display()))?;
        }
        Ok(())
    }

    fn publish_candidate(&mut self, image: &BuiltImage) -> Result<Published> {
        let repo = &image.repository;
        let src = |d: &str| {
            image
                .layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
        };
        let manifest = fs::read(src(image.manifest_digest.as_str())).with_context(|| {
            format!(
                "reading the manifest of {} from {}",
                image.name,
                image.layout.display()
            )
        })?;
        let mut uploaded = (0u64, 0u64);
        let doc: Value = serde_json::from_slice(&manifest)?;
        let mut blobs: Vec<(String, u64)> = vec![(
            doc["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            doc["config"]["size"].as_u64().unwrap_or_default(),
        )];
        for l in doc["layers"].as_array().into_iter().flatten() {
            blobs.push((
                l["digest"].as_str().unwrap_or_default().to_string(),
                l["size"].as_u64().unwrap_or_default(),
            ));
        }
        for (d, _) in &blobs {
            if let Some(n) = self.put_file(repo, d, &src(d))? {
                uploaded.0 += 1;
                uploaded.1 += n;
            }
        }
        // Counted like a registry's blob uploads: the manifest is not a blob.
        self.put(repo, image.manifest_digest.as_str(), &manifest)?;
        self.add_entry(
            repo,
            image.manifest_digest.as_str(),
            manifest.len() as u64,
            MEDIA_MANIFEST,
            None,
        )?;

        // Cross-check: re-read and re-hash everything that was stored.
        let mut checks = Vec::new();
        let stored =
            fs::read(self.blob_path(repo, image.manifest_digest.as_str())?).unwrap_or_default();
        let stored_digest = sha256(&stored);
        checks.push((
            "manifest re-hashed".to_string(),
            stored_digest == image.manifest_digest,
            format!("stored manifest hashes to {stored_digest}"),
        ));
        for (d, size) in &blobs {
            let (ok, what) = match hash_file(&self.blob_path(repo, d)?) {
                Ok((actual, n)) => (actual == *d && n == *size, format!("{actual}, {n} bytes")),
                Err(e) => (false, format!("unreadable: {e}")),
            };
            checks.push((format!("blob {d}"), ok, what));
        }
        let failures: Vec<String> = checks
            .iter()
            .filter(|c| !c.1)
            .map(|(what, _, got)| format!("{what}: {got}"))
            .collect();
        Ok(Published {
            ok: failures.is_empty(),
            digest: stored_digest.to_string(),
            manifest_size: stored.len() as u64,
            failures,
            blobs: BlobStats {
                uploaded: uploaded.0,
                skipped: blobs.len() as u64 - uploaded.0,
                mounted: 0,
                bytes_uploaded: uploaded.1,
            },
            detail: serde_json::to_value(&checks)?,
        })
    }

    fn attach(
        &mut self,
        repository: &str,
        subject_digest: &str,
        artifact: &Artifact,
    ) -> Result<String> {
        for (_, b) in &artifact.blobs {
            self.put(repository, b.digest.as_str(), &b.bytes)?;
        }
        self.put(
            repository,
            artifact.manifest.digest.as_str(),
            &artifact.manifest.bytes,
        )?;
        let tag = evidence::fallback_tag(subject_digest);
        let existing = match self.resolve_tag(repository, &tag)? {
            Some(d) => Some(self.read_verified(repository, &d)?),
            None => None,
        };
        let index = evidence::add_referrer(existing.as_deref(), artifact)?;
        self.put(repository, index.digest.as_str(), &index.bytes)?;
        self.add_entry(
            repository,
            index.digest.as_str(),
            index.size(),
            MEDIA_INDEX,
            Some(&tag),
        )?;
        Ok(artifact.manifest.digest.to_string())
    }

    fn tag(&mut self, repository: &str, digest: &str, tag: &str) -> Result<()> {
        let bytes = self.read_verified(repository, digest)?;
        self.add_entry(
            repository,
            digest,
            bytes.len() as u64,
            MEDIA_MANIFEST,
            Some(tag),
        )?;
        match self.resolve_tag(repository, tag)? {
            Some(d) if d == digest => Ok(()),
            other => bail!("tag {repository}:{tag} reads back as {other:?}, not {digest}"),
        }
    }

    fn manifest(&mut self, repository: &str, reference: &str) -> Result<Option<Vec<u8>>> {
        let digest = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            self.resolve_tag(repository, reference)?
        };
        match digest {
            Some(d) if self.blob_path(repository, &d)?.exists() => {
                Ok(Some(self.read_verified(repository, &d)?))
            }
            _ => Ok(None),
        }
    }

    fn blob(&mut self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        self.read_verified(repository, digest)
    }

    fn resolve_tag(&mut self, repository: &str, tag: &str) -> Result<Option<String>> {
        Ok(self
            .index(repository)?
            .iter()
            .find(|m| m["annotations"][ANNOTATION_REF_NAME] == tag)
            .and_then(|m| m["digest"].as_str().map(str::to_string)))
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
        self.preflight(&[to_repository.to_string()])?;
        let CopyPlan {
            manifests,
            referrers: attached,
        } = copy_plan(self, repository, digest)?;
        for CopyItem {
            digest: m,
            bytes,
            blobs,
        } in &manifests
        {
            for b in blobs {
                let data = self.read_verified(repository, b)?;
                if self.put(to_repository, b, &data)? {
                    stats.uploaded += 1;
                    stats.bytes_uploaded += data.len() as u64;
                } else {
                    stats.skipped += 1;
                }
            }
            self.put(to_repository, m, bytes)?;
            self.add_entry(to_repository, m, bytes.len() as u64, MEDIA_MANIFEST, None)?;
        }
        if attached.is_empty() {
            return Ok(stats);
        }
        let existing = referrers(self, to_repository, digest)?;
        let index = merged_referrers(existing, attached)?;
        self.put(to_repository, index.digest.as_str(), &index.bytes)?;
        self.add_entry(
            to_repository,
            index.digest.as_str(),
            index.size(),
            MEDIA_INDEX,
            Some(&evidence::fallback_tag(digest)),
        )?;
        Ok(stats)
    }

    fn list_tags(&mut self, repository: &str) -> Result<Vec<String>> {
        let mut tags: Vec<String> = self
            .index(repository)?
            .iter()
            .filter_map(|m| m["annotations"][ANNOTATION_REF_NAME].as_str())
            .map(str::to_string)
            .collect();
        tags.sort();
        Ok(tags)
    }
}
