//! The shared action cache in an OCI registry (`--cache HOST[:PORT]/REPO`
//! or `$LANE_CACHE`): CI runners share built layers through the component
//! every CI already has.
//!
//! One entry per layer cache key (`layer::cache_key`: the encoder, the
//! mtime, every entry's metadata and content digest), tagged
//! `layer-<key hex>`: an OCI image manifest whose `artifactType` and config
//! are the result document ([`MEDIA_RESULT`]: the key, the layer's digest,
//! diff_id and sizes) and whose one layer is the gzip blob itself. The
//! config descriptor also embeds the document (`data`, OCI 1.1), so a
//! reader needs two round trips, the manifest and the blob; the embedded
//! bytes are checked against the descriptor's digest and size like any
//! blob. Builds on many threads share a [`RemotePool`]: one connection
//! per thread, so fetches and writes run at once.
//!
//! Nothing read from the cache is trusted: the result document must name
//! the key asked for and the manifest's layer; the blob, streamed to a
//! temporary file, must hash to the digest and size the document names,
//! and its decompressed tar to the diff_id. An entry that fails any check
//! is reported and ignored (the layer is built), never used. Only an
//! authoritative run (a verified CI identity the policy trusts) writes;
//! other runs (pull requests, laptops) only read. The reproducible gate's
//! builds never use this cache.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::adapters::cache::{Cache, temp_path};
use crate::adapters::registry::{self, ManifestPut, RegistryTarget, Remote};
use lane_core::distribution::BlobRef;
use lane_core::evidence::MEDIA_MANIFEST;
use lane_core::id::{Digest, Repository};
use lane_core::layer::{HashReader, LayerDigests};
use lane_core::oci::canonical_json;

/// The environment variable that names the cache when `--cache` is absent.
pub const ENV_CACHE: &str = "LANE_CACHE";
/// Media type of the result document (the entry's config and artifactType).
pub const MEDIA_RESULT: &str = "application/vnd.release-lane.layer-result.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The largest layer blob taken from the cache.
pub const MAX_LAYER_BYTES: u64 = 8 << 30;

/// What the cache says a key built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultDocument {
    pub key: Digest,
    #[serde(flatten)]
    pub layer: LayerDigests,
}

/// What the shared cache did in one build.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteStats {
    /// `HOST[:PORT]/REPO`.
    pub location: String,
    /// Whether this run writes (an authoritative run).
    pub writes: bool,
    /// Layers taken from the cache, verified.
    pub hits: u64,
    /// Keys the cache did not hold.
    pub misses: u64,
    /// Entries this run wrote.
    pub written: u64,
    /// Entries found and refused, each with why.
    pub rejected: Vec<String>,
}

pub struct RemoteCache {
    remote: Remote,
    repo: String,
    pub stats: RemoteStats,
}

/// `HOST[:PORT]/REPO` -> the registry and the repository.
pub fn parse_location(location: &str) -> Result<(RegistryTarget, Repository)> {
    let (host, repo) = location.split_once('/').ok_or_else(|| {
        anyhow!("cache {location:?}: expected HOST[:PORT]/REPOSITORY (e.g. registry.example.com/ci/lane-cache)")
    })?;
    let target: RegistryTarget = host
        .parse()
        .map_err(|e| anyhow!("cache {location:?}: the registry part: {e}"))?;
    let repo: Repository = repo
        .parse()
        .map_err(|e| anyhow!("cache {location:?}: the repository part: {e}"))?;
    Ok((target, repo))
}

impl RemoteCache {
    /// Preflight of the cache's registry: reachable, credentials as for
    /// publish; push permission only when this run writes.
    pub fn open(location: &str, writes: bool) -> Result<RemoteCache> {
        let (target, repo) = parse_location(location)?;
        let repo = repo.as_str().to_string();
        let push: Vec<String> = if writes {
            vec![repo.clone()]
        } else {
            Vec::new()
        };
        let remote = registry::preflight(&target, &push)
            .with_context(|| format!("the shared cache {location}"))?;
        Ok(RemoteCache {
            remote,
            repo,
            stats: RemoteStats {
                location: location.to_string(),
                writes,
                ..RemoteStats::default()
            },
        })
    }

    /// Another connection to the same cache (for another thread), without
    /// a second preflight; its stats start at zero.
    fn another(&self) -> Result<RemoteCache> {
        Ok(RemoteCache {
            remote: self.remote.another()?,
            repo: self.repo.clone(),
            stats: RemoteStats {
                location: self.stats.location.clone(),
                writes: self.stats.writes,
                ..RemoteStats::default()
            },
        })
    }

    /// Who the cache's registry sees (`authenticated as USER`, ...).
    pub fn who(&self) -> String {
        self.remote.who()
    }

    fn tag(key: &Digest) -> String {
        format!("layer-{}", key.hex())
    }

    /// The layer of `key`, verified and put into the local `cache` (blob
    /// and action record); `None` on a miss or a refused entry (reported).
    /// `ours` computes the diff_id and size of the tar this run would write
    /// (no compression): the entry must decompress to exactly that.
    pub fn fetch(
        &mut self,
        key: &Digest,
        cache: &Cache,
        ours: &mut dyn FnMut() -> Result<(Digest, u64)>,
    ) -> Option<LayerDigests> {
        match self.try_fetch(key, cache, ours) {
            Ok(Some(d)) => {
                self.stats.hits += 1;
                Some(d)
            }
            Ok(None) => {
                self.stats.misses += 1;
                None
            }
            Err(e) => {
                self.stats
                    .rejected
                    .push(format!("{}: {e:#}", Self::tag(key)));
                None
            }
        }
    }

    /// The entry under `tag`: its manifest, its config digest and the
    /// document embedded in the config descriptor (`data`, OCI 1.1), which
    /// must hash to the descriptor's digest and size as a fetched blob
    /// must; `what` names the document in errors.
    fn entry(
        &self,
        tag: &str,
        what: &str,
    ) -> Result<Option<(serde_json::Value, Digest, Option<Vec<u8>>)>> {
        let Some(manifest) = self
            .remote
            .fetch_manifest(&self.repo, tag, MEDIA_MANIFEST)?
        else {
            return Ok(None);
        };
        let m: serde_json::Value =
            serde_json::from_slice(&manifest).context("the entry's manifest is not JSON")?;
        let config = lane_core::store::parse_digest(&m["config"]["digest"], "the entry's config")?;
        let embedded = match m["config"]["data"].as_str() {
            Some(data) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .with_context(|| format!("the entry's embedded {what} is not base64"))?;
                if Digest::of(&bytes) != config
                    || m["config"]["size"].as_u64() != Some(bytes.len() as u64)
                {
                    bail!("the embedded {what} does not hash to its descriptor {config}");
                }
                Some(bytes)
            }
            None => None,
        };
        Ok(Some((m, config, embedded)))
    }

    fn try_fetch(
        &mut self,
        key: &Digest,
        cache: &Cache,
        ours: &mut dyn FnMut() -> Result<(Digest, u64)>,
    ) -> Result<Option<LayerDigests>> {
        let Some((m, config, embedded)) = self.entry(&Self::tag(key), "result document")? else {
            return Ok(None);
        };
        let layer = lane_core::store::parse_digest(&m["layers"][0]["digest"], "the entry's layer")?;
        let doc = match embedded {
            Some(bytes) => bytes,
            // fetch_blob checks the document hashes to its digest.
            None => self.remote.fetch_blob(
                &self.repo,
                config.as_str(),
                lane_core::oci::MAX_DOCUMENT_BYTES,
            )?,
        };
        let doc: ResultDocument =
            serde_json::from_slice(&doc).context("the result document does not parse")?;
        if doc.key != *key {
            bail!("the result document is for key {}, not this one", doc.key);
        }
        if doc.layer.digest != layer || m["layers"][0]["size"].as_u64() != Some(doc.layer.size) {
            bail!("the result document and the manifest name different blobs");
        }
        let d = doc.layer;
        // The content: the tar this run would write for the key's entries
        // (its files hashed, nothing compressed) is the one the entry names.
        let (diff_id, tar_size) = ours()?;
        if diff_id != d.diff_id || tar_size != d.tar_size {
            bail!(
                "the result document names the tar {} ({} bytes), but this key's entries make {diff_id} ({tar_size} bytes): the entry is poisoned",
                d.diff_id,
                d.tar_size
            );
        }
        let tmp = temp_path(&cache.blob_path(&d.digest));
        let result = self.download_verified(&d, &tmp);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, cache.blob_path(&d.digest))
            .with_context(|| format!("moving {} into the cache", tmp.display()))?;
        cache.record(key, &d)?;
        Ok(Some(d))
    }

    /// The blob into `tmp`, checked against the document: digest and size
    /// of the gzip bytes, and the diff_id of what they decompress to.
    fn download_verified(&self, d: &LayerDigests, tmp: &Path) -> Result<()> {
        let (digest, size) =
            self.remote
                .fetch_blob_to_file(&self.repo, &d.digest, tmp, MAX_LAYER_BYTES)?;
        if digest != d.digest || size != d.size {
            bail!(
                "the blob {} served for it hashes to {digest} ({size} bytes): the entry is poisoned",
                d.digest
            );
        }
        let file = fs::File::open(tmp).with_context(|| format!("opening {}", tmp.display()))?;
        let mut tar = HashReader::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
        io::copy(&mut tar, &mut io::sink()).context("the blob is not a gzip stream")?;
        let (diff_id, tar_size) = tar.finish();
        if diff_id != d.diff_id || tar_size != d.tar_size {
            bail!(
                "the blob decompresses to {diff_id}, not the diff_id {} the entry names",
                d.diff_id
            );
        }
        Ok(())
    }

    /// Writes the entry of `key` (blob, result document, manifest under the
    /// key's tag, read back) when this run writes; a failure is reported in
    /// the stats, not fatal (the cache only saves work).
    pub fn store(&mut self, key: &Digest, d: &LayerDigests, cache: &Cache) {
        if !self.stats.writes {
            return;
        }
        if let Err(e) = self.try_store(key, d, cache) {
            self.stats
                .rejected
                .push(format!("writing {}: {e:#}", Self::tag(key)));
        }
    }

    fn try_store(&mut self, key: &Digest, d: &LayerDigests, cache: &Cache) -> Result<()> {
        let blob = BlobRef {
            digest: d.digest.clone(),
            size: d.size,
            media_type: MEDIA_LAYER.into(),
        };
        self.remote
            .push_blob_file(&self.repo, &blob, &cache.blob_path(&d.digest))?;
        let doc = canonical_json(&ResultDocument {
            key: key.clone(),
            layer: d.clone(),
        })?;
        self.put_entry(
            &Self::tag(key),
            MEDIA_RESULT,
            &doc,
            serde_json::json!([{ "mediaType": MEDIA_LAYER, "digest": d.digest, "size": d.size }]),
        )?;
        self.stats.written += 1;
        Ok(())
    }

    /// An entry under `tag`: the document `doc` (uploaded, and embedded
    /// in the config descriptor) as config and artifactType `media`, with
    /// `layers`; the manifest read back.
    fn put_entry(
        &self,
        tag: &str,
        media: &str,
        doc: &lane_core::oci::Blob,
        layers: serde_json::Value,
    ) -> Result<()> {
        self.remote
            .push_small_blob(&self.repo, doc.digest.as_str(), &doc.bytes)?;
        let manifest = canonical_json(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": media,
            "config": {
                "mediaType": media,
                "digest": doc.digest,
                "size": doc.size(),
                "data": base64::engine::general_purpose::STANDARD.encode(&doc.bytes),
            },
            "layers": layers,
        }))?;
        self.remote.put_manifest_read_back(
            &ManifestPut {
                repo: &self.repo,
                reference: tag,
                media_type: MEDIA_MANIFEST,
                bytes: &manifest.bytes,
            },
            "the shared cache entry",
        )
    }
}

/// What the cache says an image input key built: one entry per image
/// (`commands::input_keys`), tagged `image-<key hex>`, whose config (and
/// artifactType) is this document. It is only a pointer: a run takes the
/// digest it names without building only when the target's signed gate
/// statement for that digest names the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub key: Digest,
    pub manifest: Digest,
}

/// Media type of [`ImageEntry`].
pub const MEDIA_IMAGE_ENTRY: &str = "application/vnd.release-lane.image-entry.v1+json";

impl RemoteCache {
    fn image_tag(key: &Digest) -> String {
        format!("image-{}", key.hex())
    }

    /// The manifest digest recorded for the image input key `key`; `None`
    /// on a miss or a refused entry (reported in the stats).
    pub fn fetch_image(&mut self, key: &Digest) -> Option<Digest> {
        let r = (|| -> Result<Option<Digest>> {
            let Some((_, _, embedded)) = self.entry(&Self::image_tag(key), "image entry")? else {
                return Ok(None);
            };
            let bytes = embedded.context("the image entry embeds no document")?;
            let doc: ImageEntry =
                serde_json::from_slice(&bytes).context("the image entry does not parse")?;
            if doc.key != *key {
                bail!("the image entry is for key {}, not this one", doc.key);
            }
            Ok(Some(doc.manifest))
        })();
        match r {
            Ok(found) => found,
            Err(e) => {
                self.stats
                    .rejected
                    .push(format!("{}: {e:#}", Self::image_tag(key)));
                None
            }
        }
    }

    /// Writes the image entry of `key` when this run writes; a failure is
    /// reported in the stats, not fatal.
    pub fn store_image(&mut self, key: &Digest, manifest_digest: &Digest) {
        if !self.stats.writes {
            return;
        }
        let r = (|| -> Result<()> {
            let doc = canonical_json(&ImageEntry {
                key: key.clone(),
                manifest: manifest_digest.clone(),
            })?;
            self.put_entry(
                &Self::image_tag(key),
                MEDIA_IMAGE_ENTRY,
                &doc,
                serde_json::json!([]),
            )
        })();
        match r {
            Ok(()) => self.stats.written += 1,
            Err(e) => self
                .stats
                .rejected
                .push(format!("writing {}: {e:#}", Self::image_tag(key))),
        }
    }
}

/// The shared cache for builds on many threads: one [`RemoteCache`] (its
/// own connection) per thread, so fetches and writes run at once.
pub struct RemotePool {
    slots: Vec<Mutex<RemoteCache>>,
}

impl RemotePool {
    /// `n` connections to the cache (at least one): the first through the
    /// preflight of [`RemoteCache::open`], the others from what it learned.
    pub fn open(location: &str, writes: bool, n: usize) -> Result<RemotePool> {
        let first = RemoteCache::open(location, writes)?;
        let mut slots = Vec::with_capacity(n.max(1));
        for _ in 1..n {
            slots.push(Mutex::new(first.another()?));
        }
        slots.insert(0, Mutex::new(first));
        Ok(RemotePool { slots })
    }

    /// Who the cache's registry sees.
    pub fn who(&self) -> String {
        self.with(|rc| rc.who())
    }

    /// Runs `f` with a connection no other thread is using (waiting for
    /// the first one when all are busy).
    pub fn with<R>(&self, f: impl FnOnce(&mut RemoteCache) -> R) -> R {
        for slot in &self.slots {
            if let Ok(mut rc) = slot.try_lock() {
                return f(&mut rc);
            }
        }
        f(&mut self.slots[0].lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// What every connection did, added up (rejections in order).
    pub fn stats(self) -> RemoteStats {
        let mut all = self
            .slots
            .into_iter()
            .map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner()).stats);
        let mut out = all.next().unwrap_or_default();
        for s in all {
            out.hits += s.hits;
            out.misses += s.misses;
            out.written += s.written;
            out.rejected.extend(s.rejected);
        }
        out
    }
}
