//! Base images from a registry, pinned by digest.
//!
//! `base = "HOST/REPOSITORY@sha256:..."` in image.toml must also be listed in
//! `lockfiles/bases.lock`; a tag-only reference cannot even be parsed
//! (`spec::parse_base`). The manifest is fetched by digest and must hash to
//! it; the config and every layer must hash to the digests the manifest
//! names. Everything is kept in the action cache by digest, so a second build
//! reads nothing from the registry.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::adapters::cache::{Cache, write_atomic};
use crate::adapters::registry::{self, RegistryTarget};
use lane_core::evidence::MEDIA_MANIFEST;
use lane_core::layer::sha256;
use lane_core::oci::{BaseImage, LayerRecord};
use lane_core::spec::ImageSpec;

pub use lane_core::lockfile::BASES_LOCK;

/// Refuses a registry base that `lockfiles/bases.lock` does not pin.
pub fn check_pinned(root: &Path, spec: &ImageSpec, reference: &str) -> Result<()> {
    let text = std::fs::read_to_string(root.join(BASES_LOCK)).with_context(|| {
        format!(
            "{}/image.toml: base {reference} must be pinned in {BASES_LOCK}, which cannot be read; create it with [[base]] reference = \"{reference}\"",
            spec.dir
        )
    })?;
    let lock = lane_core::lockfile::parse_bases(&text)?;
    if !lock.base.iter().any(|b| b.reference == reference) {
        bail!(
            "{}/image.toml: base {reference} is not pinned in {BASES_LOCK}; add [[base]] reference = \"{reference}\" after checking that digest",
            spec.dir
        );
    }
    Ok(())
}

/// Splits `HOST[:PORT]/REPO` into the registry and the repository.
fn split(repository: &str) -> Result<(RegistryTarget, String)> {
    let (host, repo) = repository.split_once('/').unwrap_or(("", repository));
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        bail!("base {repository} names no registry host; write HOST[:PORT]/REPOSITORY@sha256:...");
    }
    let target: RegistryTarget = host
        .parse()
        .map_err(|e: String| anyhow::anyhow!("base {repository}: {e}"))?;
    Ok((target, repo.to_string()))
}

/// The base image `repository@digest`, from the cache or the registry,
/// every byte verified against its digest.
pub fn fetch(cache: &Cache, repository: &str, digest: &str, quiet: bool) -> Result<BaseImage> {
    let reference = format!("{repository}@{digest}");
    let mut remote = None;
    let (target, repo) = split(repository)?;
    let mut get = |d: &str, manifest: bool, limit: u64| -> Result<Vec<u8>> {
        let path = cache.blob_path(&d.parse()?);
        if let Ok(bytes) = std::fs::read(&path) {
            if sha256(&bytes) == d {
                return Ok(bytes);
            }
        }
        if remote.is_none() {
            crate::report::Reporter::new(quiet).say(format_args!("pulling base {reference}"));
            remote = Some(registry::preflight(&target, &[])?);
        }
        let r = remote.as_ref().expect("set above");
        let bytes = if manifest {
            r.fetch_manifest(&repo, d, MEDIA_MANIFEST)?
                .with_context(|| format!("the registry has no {reference}"))?
        } else {
            r.fetch_blob(&repo, d, limit)?
        };
        let actual = sha256(&bytes);
        if actual != d {
            bail!(
                "base {reference}: {d} from the registry hashes to {actual}; the registry serves other bytes"
            );
        }
        write_atomic(&path, &bytes)?;
        Ok(bytes)
    };
    let manifest = lane_core::oci::parse_base_manifest(
        &reference,
        &get(digest, true, lane_core::oci::MAX_MANIFEST_BYTES)?,
    )?;
    let (diff_ids, runtime) = lane_core::oci::parse_base_config(
        &reference,
        &get(
            manifest.config.as_str(),
            false,
            lane_core::oci::MAX_DOCUMENT_BYTES,
        )?,
        manifest.layers.len(),
    )?;
    let mut records = Vec::new();
    for (i, (d, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let bytes = get(d.as_str(), false, lane_core::oci::MAX_LAYER_BYTES)?;
        records.push(LayerRecord {
            digest: d.clone(),
            diff_id,
            size: bytes.len() as u64,
            created_by: format!("base {reference} layer {}", i + 1),
        });
    }
    Ok(BaseImage {
        name: reference.clone(),
        manifest_digest: digest.to_string(),
        layers: records,
        config: runtime,
    })
}
