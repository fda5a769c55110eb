//! The embedded default store: one OCI image layout per repository under
//! `target/local-registry/<repository>/`, with blobs by digest, tags as
//! `org.opencontainers.image.ref.name` entries of `index.json`, untagged
//! candidates as entries without a name, and referrers under the
//! `sha256-<hex>` fallback tag, exactly as a registry without the referrers
//! API holds them. It gets the same cross-check as a registry: everything is
//! re-hashed from what was stored.
//!
//! Writers are serialised by an exclusive `flock(2)` on `<root>/.lock`,
//! held for each read-modify-write of an `index.json` (a tag move, a new
//! candidate, a referrers index). Every file is written to a temporary name
//! and renamed into place, so a process killed at any point leaves either
//! the old or the new file; the kernel drops the lock with the process.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::adapters::cache::write_atomic;
use crate::adapters::fault;
use lane_core::distribution::BuiltImage;
use lane_core::distribution::{BlobStats, CrossCheck};
use lane_core::evidence::{MEDIA_INDEX, MEDIA_MANIFEST};
use lane_core::id::{Digest, Repository, Tag, Target};
use lane_core::layer::{HashReader, sha256};
use lane_core::oci::Blob;
use lane_core::oci::{ANNOTATION_REF_NAME, OCI_LAYOUT};
use lane_core::store::{BlobCopy, Published, Store, parse_digest};

pub struct LocalStore {
    pub root: PathBuf,
}

/// The local store's writer lock (released when dropped, or by the kernel
/// when the process ends).
struct StoreLock(#[allow(dead_code)] fs::File);

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    /// The folder of `repository`: a parsed [`Repository`] cannot leave the
    /// store (`..`, absolute paths and the like never parse).
    fn repo(&self, repository: &Repository) -> PathBuf {
        self.root.join(repository.as_str())
    }

    /// Where `digest` is kept; only a parsed [`Digest`] names a path, so a
    /// referrers index that names `sha256:../../x` is refused before this.
    fn blob_path(&self, repository: &Repository, digest: &Digest) -> PathBuf {
        self.repo(repository).join(digest.blob_path())
    }

    /// Holds the store's writer lock until the value is dropped; waits for
    /// another process that holds it.
    fn lock(&self) -> Result<StoreLock> {
        use std::os::fd::AsRawFd;
        fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the local store lock {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking the local store {}", path.display()));
        }
        Ok(StoreLock(file))
    }

    fn index(&self, repository: &Repository) -> Result<Vec<Value>> {
        let path = self.repo(repository).join("index.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is damaged", path.display()))?;
                Ok(v["manifests"].as_array().cloned().unwrap_or_default())
            }
            Err(_) => Ok(Vec::new()),
        }
    }

    fn write_index(&self, repository: &Repository, manifests: Vec<Value>) -> Result<()> {
        let dir = self.repo(repository);
        write_atomic(&dir.join("oci-layout"), OCI_LAYOUT)?;
        let doc = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests });
        write_atomic(&dir.join("index.json"), &serde_json::to_vec(&doc)?)
    }

    /// Stores bytes under their digest; returns whether they were new.
    fn put(&self, repository: &Repository, digest: &Digest, bytes: &[u8]) -> Result<bool> {
        let path = self.blob_path(repository, digest);
        if path.exists() {
            return Ok(false);
        }
        write_atomic(&path, bytes)?;
        Ok(true)
    }

    fn put_file(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &Path,
    ) -> Result<Option<u64>> {
        let path = self.blob_path(repository, digest);
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

    /// [`LocalStore::add_entry`] of an image manifest, under the writer lock.
    fn add_manifest(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: u64,
        tag: Option<&Tag>,
    ) -> Result<()> {
        let lock = self.lock()?;
        self.add_entry(&lock, repository, digest, size, MEDIA_MANIFEST, tag)
    }

    /// Adds `digest` to the repository's index: under `tag` (replacing what
    /// the tag named), or untagged (once). The caller holds the writer lock.
    fn add_entry(
        &self,
        _locked: &StoreLock,
        repository: &Repository,
        digest: &Digest,
        size: u64,
        media: &str,
        tag: Option<&Tag>,
    ) -> Result<()> {
        let mut manifests = self.index(repository)?;
        match tag {
            Some(t) => manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME] != t.as_str()),
            None => {
                if manifests.iter().any(|m| m["digest"] == digest.as_str()) {
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
    pub fn read_verified(&self, repository: &Repository, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = fs::read(self.blob_path(repository, digest))
            .with_context(|| format!("{repository}@{digest} is not in the local store"))?;
        if !digest.matches(&bytes) {
            bail!(
                "local store blob {repository}@{digest} hashes to {}: the store is damaged",
                sha256(&bytes)
            );
        }
        Ok(bytes)
    }
}

fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let mut r = HashReader::new(fs::File::open(path)?);
    std::io::copy(&mut r, &mut std::io::sink())?;
    Ok(r.finish())
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local store {}", self.root.display())
    }

    fn is_registry(&self) -> bool {
        false
    }

    fn subject_name(&self, repository: &Repository) -> String {
        format!("local/{repository}")
    }

    fn preflight(&mut self, repositories: &[Repository]) -> Result<()> {
        for r in repositories {
            let dir = self.repo(r);
            fs::create_dir_all(dir.join("blobs/sha256"))
                .with_context(|| format!("local store {} is not writable", dir.display()))?;
        }
        Ok(())
    }

    fn publish_candidate(&mut self, image: &BuiltImage) -> Result<Published> {
        let repo = &image.repository;
        // Blobs a killed run left half-copied.
        crate::adapters::cache::sweep_stale(&self.repo(repo).join("blobs/sha256"));
        crate::adapters::cache::sweep_stale(&self.repo(repo));
        let layout = crate::adapters::layout::Layout::at(&image.name, &image.layout);
        let manifest = fs::read(layout.blob_path(&image.manifest_digest)).with_context(|| {
            format!(
                "reading the manifest of {} from {}",
                image.name,
                image.layout.display()
            )
        })?;
        let mut uploaded = (0u64, 0u64);
        let doc: Value = serde_json::from_slice(&manifest)?;
        let mut blobs: Vec<(Digest, u64)> = vec![(
            parse_digest(&doc["config"]["digest"], "the manifest's config")?,
            doc["config"]["size"].as_u64().unwrap_or_default(),
        )];
        for l in doc["layers"].as_array().into_iter().flatten() {
            blobs.push((
                parse_digest(&l["digest"], "a manifest layer")?,
                l["size"].as_u64().unwrap_or_default(),
            ));
        }
        for (d, _) in &blobs {
            if let Some(n) = self.put_file(repo, d, &layout.blob_path(d))? {
                uploaded.0 += 1;
                uploaded.1 += n;
                fault::point(fault::PUBLISH_BLOB_STORED);
            }
        }
        // Counted like a registry's blob uploads: the manifest is not a blob.
        self.put_manifest(repo, &image.manifest_digest, &manifest)?;
        fault::point(fault::PUBLISH_MANIFEST_STORED);

        // Cross-check: re-read and re-hash everything that was stored.
        let mut checks = Vec::new();
        let stored = fs::read(self.blob_path(repo, &image.manifest_digest)).unwrap_or_default();
        let stored_digest = sha256(&stored);
        checks.push((
            "manifest re-hashed".to_string(),
            stored_digest == image.manifest_digest,
            format!("stored manifest hashes to {stored_digest}"),
        ));
        for (d, size) in &blobs {
            let (ok, what) = match hash_file(&self.blob_path(repo, d)) {
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
        let ok = failures.is_empty();
        Ok(Published {
            ok,
            cross_check: CrossCheck {
                ok,
                pushed_digest_header: None,
                fetched_digest_header: None,
                fetched_sha256: stored_digest.to_string(),
                blobs_verified: blobs.len() as u64,
                tags: Vec::new(),
            },
            digest: stored_digest,
            manifest_size: stored.len() as u64,
            failures,
            blobs: BlobStats {
                uploaded: uploaded.0,
                skipped: blobs.len() as u64 - uploaded.0,
                mounted: 0,
                bytes_uploaded: uploaded.1,
            },
        })
    }

    fn put_blob(&mut self, repository: &Repository, blob: &Blob) -> Result<()> {
        self.put(repository, &blob.digest, &blob.bytes).map(|_| ())
    }

    fn tag(&mut self, repository: &Repository, digest: &Digest, tag: &Tag) -> Result<()> {
        let bytes = self.read_verified(repository, digest)?;
        self.add_manifest(repository, digest, bytes.len() as u64, Some(tag))?;
        match self.resolve_tag(repository, tag)? {
            Some(d) if d == *digest => Ok(()),
            // Another process moved it between our write and this read.
            Some(now) => Err(anyhow::Error::new(lane_core::distribution::Overtaken {
                tag: tag.to_string(),
                ours: digest.clone(),
                now,
            })),
            None => bail!("tag {repository}:{tag} reads back as nothing, not {digest}"),
        }
    }

    fn manifest(&mut self, repository: &Repository, reference: &Target) -> Result<Option<Vec<u8>>> {
        let digest = match reference {
            Target::Digest(d) => Some(d.clone()),
            Target::Tag(t) => self.resolve_tag(repository, t)?,
        };
        match digest {
            Some(d) if self.blob_path(repository, &d).exists() => {
                Ok(Some(self.read_verified(repository, &d)?))
            }
            _ => Ok(None),
        }
    }

    fn blob(&mut self, repository: &Repository, digest: &Digest) -> Result<Vec<u8>> {
        self.read_verified(repository, digest)
    }

    fn resolve_tag(&mut self, repository: &Repository, tag: &Tag) -> Result<Option<Digest>> {
        self.index(repository)?
            .iter()
            .find(|m| m["annotations"][ANNOTATION_REF_NAME] == tag.as_str())
            .map(|m| {
                parse_digest(&m["digest"], "an index.json entry")
                    .with_context(|| format!("local store {}/{repository}", self.root.display()))
            })
            .transpose()
    }

    fn copy_blob(&mut self, from: &Repository, to: &Repository, blob: &Digest) -> Result<BlobCopy> {
        let data = self.read_verified(from, blob)?;
        Ok(if self.put(to, blob, &data)? {
            BlobCopy::Uploaded(data.len() as u64)
        } else {
            BlobCopy::Present
        })
    }

    fn put_manifest(&mut self, repo: &Repository, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let repository = repo;
        self.put(repository, digest, bytes)?;
        self.add_manifest(repository, digest, bytes.len() as u64, None)?;
        self.read_verified(repository, digest).map(|_| ())
    }

    /// Under the writer lock, the entries the fallback tag lists now are
    /// kept too: a concurrent attach to the same subject is never lost.
    fn put_referrers(&mut self, repo: &Repository, subject: &Digest, index: &Blob) -> Result<()> {
        let lock = self.lock()?;
        let tag = subject.fallback_tag();
        let now = lane_core::store::referrers(self, repo, subject)?;
        let ours: Value = serde_json::from_slice(&index.bytes)
            .context("the referrers index to store is not JSON")?;
        let ours = ours["manifests"].as_array().cloned().unwrap_or_default();
        let merged = lane_core::store::merged_referrers(now, ours)?;
        self.put(repo, &merged.digest, &merged.bytes)?;
        self.add_entry(
            &lock,
            repo,
            &merged.digest,
            merged.size(),
            MEDIA_INDEX,
            Some(&tag),
        )
    }

    fn list_tags(&mut self, repository: &Repository) -> Result<Vec<String>> {
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
