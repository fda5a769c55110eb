//! Images a release does not build (issue 25, point 7): the target store
//! already holds the digest an earlier run built from the same input key,
//! with a reusable signed gate statement that names that key. Nothing of
//! such an image is compressed, fetched from a cache or built by cargo;
//! its manifest and config (two small documents) are read from the
//! target, checked against the digest, and stand in for the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::adapters::cache::Cache;
use crate::adapters::remote_cache::RemotePool;
use crate::lane::plan::{BuildPlan, PlannedImage};
use crate::report::Reporter;
use lane_core::distribution::{BuiltImage, BuiltLayer, CacheStats};
use lane_core::id::Digest;
use lane_core::reuse::Proof;
use lane_core::spec::BaseRef;
use lane_core::store::{Store, parse_digest};

use crate::adapters::layout::HELD_MARKER;

/// An image the target already holds, and the proof that lets it stand.
pub struct Held {
    pub image: BuiltImage,
    pub proof: Proof,
}

/// The images of `plan` that need no build: released (`released`), their
/// input key known and recorded (the local cache, then the shared cache)
/// with a manifest digest whose reusable proof in `store` names the same
/// key, and no image that is built needing them as a base. `proof_of`
/// finds a digest's reusable proof in the store.
pub fn find(
    plan: &BuildPlan,
    released: &dyn Fn(&str) -> bool,
    cache_dir: &Path,
    remote: Option<&RemotePool>,
    store: &mut dyn Store,
    proof_of: &mut dyn FnMut(&mut dyn Store, &PlannedImage, &Digest) -> Option<Proof>,
    held_dir: &Path,
    progress: &Reporter,
) -> Result<BTreeMap<String, Held>> {
    let cache = Cache::open(cache_dir)?;
    let mut found = BTreeMap::new();
    for p in &plan.images {
        let Some(key) = &p.input_key else { continue };
        if !released(&p.spec.name) {
            continue;
        }
        let Some(digest) = cache
            .image_digest(key)
            .or_else(|| remote.and_then(|r| r.with(|rc| rc.fetch_image(key))))
        else {
            continue;
        };
        let Some(proof) = proof_of(store, p, &digest) else {
            continue;
        };
        if proof.input_key.as_ref() != Some(key) {
            progress.say(format_args!(
                "build: {} built from these inputs before as {digest}, but its gate statement names another input key; building it",
                p.spec.name
            ));
            continue;
        }
        match held_image(p, key, &digest, store, &held_dir.join(&p.spec.name)) {
            Ok(image) => {
                found.insert(p.spec.name.clone(), Held { image, proof });
            }
            Err(e) => progress.warn(format_args!(
                "build: {} is held in the target as {digest}, but {e:#}; building it",
                p.spec.name
            )),
        }
    }
    // An image that is built needs its workspace base built too.
    loop {
        let needed: BTreeSet<String> = plan
            .images
            .iter()
            .filter(|p| !found.contains_key(&p.spec.name))
            .filter_map(|p| match &p.spec.base {
                BaseRef::Workspace { image } => Some(image.clone()),
                _ => None,
            })
            .collect();
        let before = found.len();
        found.retain(|name, _| !needed.contains(name));
        if found.len() == before {
            break;
        }
    }
    for (name, h) in &found {
        progress.say(format_args!(
            "held {name} {} (the target holds it, built from the same inputs; its gate statement {} names them): nothing built",
            h.image.manifest_digest, h.proof.reused.from
        ));
    }
    Ok(found)
}

/// `plan` without the held images, the images only they needed (bases not
/// released on their own) and the binaries no remaining image holds.
pub fn rest(
    plan: &BuildPlan,
    held: &BTreeMap<String, Held>,
    released: &dyn Fn(&str) -> bool,
) -> BuildPlan {
    let mut keep: BTreeSet<String> = plan
        .images
        .iter()
        .filter(|p| released(&p.spec.name) && !held.contains_key(&p.spec.name))
        .map(|p| p.spec.name.clone())
        .collect();
    // Bases of what is built, transitively (the plan lists bases first).
    for p in plan.images.iter().rev() {
        if keep.contains(&p.spec.name)
            && let BaseRef::Workspace { image } = &p.spec.base
        {
            keep.insert(image.clone());
        }
    }
    let mut out = plan.clone();
    out.images.retain(|p| keep.contains(&p.spec.name));
    let used: BTreeSet<(String, String)> = out
        .images
        .iter()
        .flat_map(|p| &p.spec.layers)
        .flat_map(|l| &l.binaries)
        .map(|b| (b.package.clone(), b.bin.clone()))
        .collect();
    out.binaries
        .retain(|b| used.contains(&(b.request.package.clone(), b.request.bin.clone())));
    out
}

/// The held image: its manifest and config read from the target and
/// checked against the digest, written as a layout without layer blobs
/// (marked [`HELD_MARKER`]).
fn held_image(
    p: &PlannedImage,
    key: &Digest,
    digest: &Digest,
    store: &mut dyn Store,
    dir: &Path,
) -> Result<BuiltImage> {
    let repo = &p.spec.repository;
    let manifest = lane_core::verify::fetch_manifest(store, repo, digest)?;
    let m: serde_json::Value =
        serde_json::from_slice(&manifest).context("the held manifest is not JSON")?;
    let config_digest = parse_digest(&m["config"]["digest"], "the held manifest's config")?;
    let config = store.blob(repo, &config_digest)?;
    if !config_digest.matches(&config) {
        bail!("its config does not hash to {config_digest}");
    }
    let mut layers = Vec::new();
    let diff_ids: serde_json::Value =
        serde_json::from_slice(&config).context("the held config is not JSON")?;
    let diff_ids = diff_ids["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let descriptors = m["layers"].as_array().cloned().unwrap_or_default();
    if diff_ids.len() != descriptors.len() {
        bail!("its config and manifest name different numbers of layers");
    }
    for (l, d) in descriptors.iter().zip(&diff_ids) {
        layers.push(BuiltLayer {
            digest: parse_digest(&l["digest"], "a held layer")?,
            diff_id: parse_digest(d, "a held diff_id")?,
            size: l["size"].as_u64().context("a held layer has no size")?,
        });
    }
    write_layout(dir, digest, &manifest, &config_digest, &config, &m)?;
    Ok(BuiltImage {
        name: p.spec.name.clone(),
        repository: p.spec.repository.clone(),
        tags: p.spec.tags.clone(),
        manifest_digest: digest.clone(),
        config_digest,
        layout: dir.to_path_buf(),
        layers,
        cache: CacheStats::default(),
        input_key: Some(key.clone()),
        held: true,
    })
}

/// index.json, oci-layout, the manifest and config blobs and the marker,
/// into a temporary folder renamed into place.
fn write_layout(
    dir: &Path,
    digest: &Digest,
    manifest: &[u8],
    config_digest: &Digest,
    config: &[u8],
    m: &serde_json::Value,
) -> Result<()> {
    let tmp: PathBuf = crate::adapters::cache::temp_path(dir);
    let r = (|| -> Result<()> {
        let blobs = tmp.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        fs::write(blobs.join(digest.hex()), manifest)?;
        fs::write(blobs.join(config_digest.hex()), config)?;
        fs::write(tmp.join("oci-layout"), lane_core::oci::OCI_LAYOUT)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": m["mediaType"].as_str().unwrap_or(lane_core::evidence::MEDIA_MANIFEST),
                "digest": digest,
                "size": manifest.len(),
            }],
        });
        fs::write(tmp.join("index.json"), serde_json::to_vec(&index)?)?;
        fs::write(tmp.join(HELD_MARKER), b"")?;
        Ok(())
    })();
    if let Err(e) = r {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("writing {}", dir.display())));
    }
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir).with_context(|| format!("moving {} into place", tmp.display()))
}
