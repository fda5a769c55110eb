//! OCI image layouts on disk (`target/images/<name>/`, the local store's
//! repositories): the one place that reads and writes them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lane_core::distribution::LocalImage;
use lane_core::id::Digest;
use lane_core::layer::sha256;

/// Where a layout keeps the blob `digest`.
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join(digest.blob_path())
}

/// Reads `target/images/<name>/` and checks every blob's size.
pub fn read_image(name: &str, layout: &Path) -> Result<LocalImage> {
    let index = fs::read(layout.join("index.json"))
        .with_context(|| format!("reading {}/index.json", layout.display()))?;
    let image = LocalImage::parse(name, layout, &index, &|d| {
        fs::read(blob_path(layout, &d.parse()?))
            .with_context(|| format!("reading blob {d} from {}", layout.display()))
    })?;
    for b in &image.blobs {
        let p = blob_path(layout, &b.digest.parse()?);
        let len = fs::metadata(&p)
            .with_context(|| format!("the layout {} lacks blob {}", layout.display(), b.digest))?
            .len();
        if len != b.size {
            bail!(
                "blob {} in {} has {len} bytes, the manifest says {}; rebuild with cargo xtask build {name}",
                b.digest,
                layout.display(),
                b.size
            );
        }
    }
    Ok(image)
}

/// An image read back from its OCI layout, digests re-checked.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    pub name: String,
    pub dir: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer digests, in order.
    pub layers: Vec<String>,
    /// Every blob file of the layout, relative to `dir` (`blobs/sha256/HEX`).
    pub blobs: Vec<String>,
    /// `config.User` of the image config (empty: root).
    pub user: String,
}

/// Reads the layout `dir` written by `cargo xtask build`: index.json, the
/// one manifest it names, the config. Refuses a layout whose manifest or
/// config bytes do not hash to their names, or whose manifest is not the
/// one `expected_manifest` names.
pub fn read_smoke_image(name: &str, dir: &Path, expected_manifest: &str) -> Result<LayoutImage> {
    let read = |rel: &str| -> Result<Vec<u8>> {
        let p = dir.join(rel);
        fs::read(&p).with_context(|| {
            format!(
                "reading {} (rebuild with `cargo xtask build {name}`)",
                p.display()
            )
        })
    };
    let blob = |digest: &str| -> Result<(String, Vec<u8>)> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("invalid digest {digest:?} in {}", dir.display()))?;
        let rel = format!("blobs/sha256/{hex}");
        let bytes = read(&rel)?;
        let actual = sha256(&bytes);
        if actual != digest {
            bail!(
                "blob {rel} of {} is corrupt: expected {digest}, got {actual}; rebuild with `cargo xtask build {name}`",
                dir.display()
            );
        }
        Ok((rel, bytes))
    };
    let index: serde_json::Value = serde_json::from_slice(&read("index.json")?)
        .with_context(|| format!("parsing {}/index.json", dir.display()))?;
    let manifests = index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let [desc] = manifests else {
        bail!(
            "{}/index.json must name exactly one manifest, it names {}",
            dir.display(),
            manifests.len()
        );
    };
    let manifest_digest = desc["digest"].as_str().unwrap_or_default().to_string();
    if manifest_digest != expected_manifest {
        bail!(
            "{}/index.json names manifest {manifest_digest}, but the build reported {expected_manifest}",
            dir.display()
        );
    }
    let (manifest_rel, manifest_bytes) = blob(&manifest_digest)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("parsing manifest {manifest_digest}"))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (config_rel, config_bytes) = blob(&config_digest)?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("parsing config {config_digest}"))?;
    let mut blobs = vec![manifest_rel, config_rel];
    let mut layers = Vec::new();
    for l in manifest["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let digest = l["digest"].as_str().unwrap_or_default().to_string();
        let rel = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        if !dir.join(&rel).is_file() {
            bail!(
                "layer {digest} is missing from {}; rebuild with `cargo xtask build {name}`",
                dir.display()
            );
        }
        if !blobs.contains(&rel) {
            blobs.push(rel);
        }
        layers.push(digest);
    }
    Ok(LayoutImage {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        manifest_digest,
        config_digest,
        layers,
        blobs,
        user: config["config"]["User"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}
