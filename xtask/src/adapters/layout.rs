//! OCI image layouts on disk (`target/images/<name>/`, the local store's
//! repositories): the one place that reads and writes them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lane_core::distribution::LocalImage;
use lane_core::drift::{ImageFs, RuntimeFacts};
use lane_core::id::Digest;
use lane_core::layer::sha256;

/// The marker file of a held layout (`commands::held`): its layer blobs
/// are not here, the target holds them.
pub const HELD_MARKER: &str = "held-in-target";

/// One OCI image layout on disk (`target/images/<name>/`): the one type
/// through which build results are read back, for publish, smoke, drift,
/// release and the stores. Every blob path comes from a parsed [`Digest`].
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    /// The image's name, for messages (`rebuild with cargo xtask build NAME`).
    pub name: String,
}

impl Layout {
    pub fn at(name: &str, dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// Where the layout keeps the blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.blob_path())
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let p = self.dir.join(rel);
        fs::read(&p).with_context(|| {
            format!(
                "reading {} (build the image first: cargo xtask build {})",
                p.display(),
                self.name
            )
        })
    }

    /// A blob's bytes, re-hashed: a corrupt blob is an error.
    pub fn blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = self.read(&digest.blob_path())?;
        if !digest.matches(&bytes) {
            bail!(
                "blob {} of {} is corrupt: expected {digest}, got {}; rebuild with `cargo xtask build {}`",
                digest.blob_path(),
                self.dir.display(),
                sha256(&bytes),
                self.name
            );
        }
        Ok(bytes)
    }

    /// The one manifest `index.json` names: its digest and its JSON (bytes
    /// re-hashed).
    pub fn manifest(&self) -> Result<(Digest, serde_json::Value)> {
        let index: serde_json::Value = serde_json::from_slice(&self.read("index.json")?)
            .with_context(|| format!("parsing {}/index.json", self.dir.display()))?;
        let manifests = index["manifests"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let [desc] = manifests else {
            bail!(
                "{}/index.json must name exactly one manifest, it names {}",
                self.dir.display(),
                manifests.len()
            );
        };
        let digest = self.digest_at(&desc["digest"], "index.json")?;
        let manifest = serde_json::from_slice(&self.blob(&digest)?)
            .with_context(|| format!("parsing manifest {digest} of {}", self.dir.display()))?;
        Ok((digest, manifest))
    }

    fn digest_at(&self, v: &serde_json::Value, what: &str) -> Result<Digest> {
        v.as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{what} of {}", self.dir.display()))
    }

    /// The image as a store publishes it; checks every blob's size.
    pub fn image(&self) -> Result<LocalImage> {
        let (name, layout) = (&self.name, &self.dir);
        let index = self.read("index.json")?;
        let image = LocalImage::parse(name, layout, &index, &|d| {
            fs::read(self.blob_path(d))
                .with_context(|| format!("reading blob {d} from {}", layout.display()))
        })?;
        // A held layout (`commands::held`) has only its manifest and
        // config: the target holds the layers, and publishing checks them
        // there.
        let held = self.dir.join(HELD_MARKER).exists();
        for b in &image.blobs {
            let p = self.blob_path(&b.digest);
            if held && !p.exists() {
                continue;
            }
            let len = fs::metadata(&p)
                .with_context(|| {
                    format!("the layout {} lacks blob {}", layout.display(), b.digest)
                })?
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

    /// The image config's `architecture` (`amd64`).
    pub fn architecture(&self) -> Result<String> {
        let (_, manifest) = self.manifest()?;
        let d = self.digest_at(&manifest["config"]["digest"], "the config digest")?;
        let config: serde_json::Value = serde_json::from_slice(&self.blob(&d)?)
            .with_context(|| format!("parsing config {d}"))?;
        config["architecture"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("config {d} of {} names no architecture", self.dir.display()))
    }

    /// The merged file system of the image's layers (whiteouts applied) and
    /// the runtime facts of its config, for drift.
    pub fn file_system(&self) -> Result<(ImageFs, RuntimeFacts)> {
        let (_, manifest) = self.manifest()?;
        let config: serde_json::Value = match manifest["config"]["digest"].as_str() {
            Some(_) => {
                let d = self.digest_at(&manifest["config"]["digest"], "the config digest")?;
                serde_json::from_slice(&self.blob(&d)?)
                    .with_context(|| format!("parsing config {d}"))?
            }
            None => serde_json::Value::Null,
        };
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let c = &config["config"];
        let runtime = RuntimeFacts::from_config(
            &strings(&c["Entrypoint"]),
            &strings(&c["Cmd"]),
            &strings(&c["Env"]),
        );
        let mut image = ImageFs::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = self.digest_at(&layer["digest"], "a layer digest")?;
            let media = layer["mediaType"].as_str().unwrap_or_default();
            let path = self.blob_path(&digest);
            let f = fs::File::open(&path).with_context(|| format!("opening layer {digest}"))?;
            let applied = if media.ends_with("+gzip") || media.ends_with(".gzip") {
                image.apply_layer(flate2::read::GzDecoder::new(f))
            } else if media.ends_with(".tar") || media.ends_with("tar") {
                image.apply_layer(f)
            } else {
                bail!(
                    "layer {digest} has media type {media}, which drift cannot read (gzip or plain tar)"
                );
            };
            applied.with_context(|| format!("reading layer {digest} of {}", self.dir.display()))?;
        }
        Ok((image, runtime))
    }
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

impl Layout {
    /// The image for the Docker Engine: the one manifest, which must be the
    /// one `expected_manifest` names, its config (both re-hashed) and every
    /// layer file present.
    pub fn smoke_image(&self, expected_manifest: &str) -> Result<LayoutImage> {
        let (name, dir) = (&self.name, &self.dir);
        let (manifest_digest, manifest) = self.manifest()?;
        if manifest_digest != expected_manifest {
            bail!(
                "{}/index.json names manifest {manifest_digest}, but the build reported {expected_manifest}",
                dir.display()
            );
        }
        let config_digest = self.digest_at(&manifest["config"]["digest"], "the config digest")?;
        let config: serde_json::Value = serde_json::from_slice(&self.blob(&config_digest)?)
            .with_context(|| format!("parsing config {config_digest}"))?;
        let mut blobs = vec![manifest_digest.blob_path(), config_digest.blob_path()];
        let mut layers = Vec::new();
        for l in manifest["layers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let digest = self.digest_at(&l["digest"], "a layer digest")?;
            let rel = digest.blob_path();
            if !dir.join(&rel).is_file() {
                bail!(
                    "layer {digest} is missing from {}; rebuild with `cargo xtask build {name}`",
                    dir.display()
                );
            }
            if !blobs.contains(&rel) {
                blobs.push(rel);
            }
            layers.push(digest.to_string());
        }
        Ok(LayoutImage {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: config_digest.to_string(),
            layers,
            blobs,
            user: config["config"]["User"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }
}
