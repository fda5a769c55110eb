//! Base images from a registry, pinned by digest.
//!
//! `base = "HOST/REPOSITORY@sha256:..."` in image.toml must also be listed in
//! `lockfiles/bases.lock`; a tag-only reference cannot even be parsed
//! (`spec::parse_base`). The manifest is fetched by digest and must hash to
//! it; the config and every layer must hash to the digests the manifest
//! names. Everything is kept in the action cache by digest, so a second build
//! reads nothing from the registry.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::adapters::cache::{Cache, write_atomic};
use crate::adapters::registry::{self, RegistryTarget};
use lane_core::evidence::MEDIA_MANIFEST;
use lane_core::layer::sha256;
use lane_core::oci::{BaseImage, LayerRecord};
use lane_core::spec::{ImageSpec, RuntimeConfig};

pub const BASES_LOCK: &str = "lockfiles/bases.lock";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasesLock {
    version: u32,
    #[serde(default)]
    base: Vec<LockedBase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockedBase {
    reference: String,
}

/// Refuses a registry base that `lockfiles/bases.lock` does not pin.
pub fn check_pinned(root: &Path, spec: &ImageSpec, reference: &str) -> Result<()> {
    let text = std::fs::read_to_string(root.join(BASES_LOCK)).with_context(|| {
        format!(
            "{}/image.toml: base {reference} must be pinned in {BASES_LOCK}, which cannot be read; create it with [[base]] reference = \"{reference}\"",
            spec.dir
        )
    })?;
    let lock: BasesLock = toml::from_str(&text).with_context(|| format!("parsing {BASES_LOCK}"))?;
    if lock.version != 1 {
        bail!(
            "{BASES_LOCK}: version {} is not supported; write version = 1",
            lock.version
        );
    }
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
    let mut get = |d: &str, manifest: bool| -> Result<Vec<u8>> {
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
            r.fetch_blob(&repo, d)?
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
    let manifest: Value = serde_json::from_slice(&get(digest, true)?)
        .with_context(|| format!("base {reference}: the manifest is not JSON"))?;
    if manifest["mediaType"] != MEDIA_MANIFEST
        && manifest["config"]["mediaType"] != "application/vnd.oci.image.config.v1+json"
    {
        bail!(
            "base {reference} is not an OCI image manifest (an index or another media type); pin the digest of one platform's manifest"
        );
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("the base manifest names no config")?;
    let config: Value = serde_json::from_slice(&get(config_digest, false)?)?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    let layers = manifest["layers"]
        .as_array()
        .context("the base manifest has no layers")?;
    if layers.len() != diff_ids.len() {
        bail!(
            "base {reference}: {} layers but {} diff_ids in its config",
            layers.len(),
            diff_ids.len()
        );
    }
    let mut records = Vec::new();
    for (i, (l, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let d = l["digest"].as_str().context("a base layer has no digest")?;
        let bytes = get(d, false)?;
        records.push(LayerRecord {
            digest: d.parse()?,
            diff_id: diff_id.parse()?,
            size: bytes.len() as u64,
            created_by: format!("base {reference} layer {}", i + 1),
        });
    }
    let c = &config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let env: BTreeMap<String, String> = strings(&c["Env"])
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let labels: BTreeMap<String, String> = c["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let runtime = RuntimeConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env,
        user: c["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        workdir: c["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        exposed_ports: c["ExposedPorts"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        labels,
    };
    Ok(BaseImage {
        name: reference.clone(),
        manifest_digest: digest.to_string(),
        layers: records,
        config: runtime,
    })
}
