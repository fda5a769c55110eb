//! `cargo xtask publish`: the OCI layouts `build` writes, published by
//! digest, read back and cross-checked, and only then tagged.
//!
//! Order: preflight (before any build work), build, then per image: blobs
//! the destination lacks, the manifest's exact bytes by digest, the identity
//! cross-check, the tags (each read back). A failed check leaves every tag
//! where it was.
//!
//! Destinations: a registry ([`crate::registry`], `--registry`), or with no
//! registry configured the local OCI image layout store
//! `target/local-registry/<repository>/`, with the same cross-check.
//!
//! Pure parts: [`LocalImage::parse`], [`check_digest`], [`check_tag`].

use std::fs;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::build::{self, BuildOptions, Progress};
use crate::layer::sha256;

use crate::local_store::LocalStore;
use crate::registry::{self, RegistryTarget};
use crate::store::Store;
use crate::workspace::{self, Workspace};

/// Names the registry when `--registry` is not given.
pub const ENV_REGISTRY: &str = "LANE_REGISTRY";

/// A blob the manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// An image as its OCI layout holds it: the manifest's exact bytes and the
/// blobs it names (layers, then config).
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub name: String,
    pub layout: PathBuf,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub blobs: Vec<BlobRef>,
}

impl LocalImage {
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout, digest)
    }

    /// Pure: from `index.json` and a reader of blobs by digest.
    pub fn parse(
        name: &str,
        layout: &Path,
        index: &[u8],
        read_blob: &dyn Fn(&str) -> Result<Vec<u8>>,
    ) -> Result<LocalImage> {
        let index: serde_json::Value =
            serde_json::from_slice(index).context("index.json is not JSON")?;
        let entry = index["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .ok_or_else(|| anyhow!("index.json lists no manifest"))?;
        let digest = entry["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("index.json's manifest has no digest"))?
            .to_string();
        let media_type = entry["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let manifest = read_blob(&digest)?;
        let actual = sha256(&manifest);
        if actual != digest {
            bail!(
                "the layout's manifest blob hashes to {actual}, not {digest}; rebuild with cargo xtask build {name}"
            );
        }
        let m: serde_json::Value =
            serde_json::from_slice(&manifest).context("the manifest is not JSON")?;
        let descriptor = |d: &serde_json::Value| -> Result<BlobRef> {
            Ok(BlobRef {
                digest: d["digest"]
                    .as_str()
                    .filter(|s| is_sha256(s))
                    .ok_or_else(|| anyhow!("the manifest names a blob without a sha256 digest"))?
                    .to_string(),
                size: d["size"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("the manifest names a blob without a size"))?,
                media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
            })
        };
        let mut blobs = Vec::new();
        for l in m["layers"].as_array().into_iter().flatten() {
            blobs.push(descriptor(l)?);
        }
        blobs.push(descriptor(&m["config"])?);
        Ok(LocalImage {
            name: name.to_string(),
            layout: layout.to_path_buf(),
            manifest,
            manifest_digest: digest,
            manifest_media_type: media_type,
            blobs,
        })
    }

    /// Reads `target/images/<name>/` and checks every blob's size.
    pub fn read(name: &str, layout: &Path) -> Result<LocalImage> {
        let index = fs::read(layout.join("index.json"))
            .with_context(|| format!("reading {}/index.json", layout.display()))?;
        let image = LocalImage::parse(name, layout, &index, &|d| {
            fs::read(blob_path(layout, d))
                .with_context(|| format!("reading blob {d} from {}", layout.display()))
        })?;
        for b in &image.blobs {
            let p = image.blob_path(&b.digest);
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
}

fn is_sha256(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// What moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlobStats {
    pub uploaded: u64,
    pub skipped: u64,
    pub mounted: u64,
    pub bytes_uploaded: u64,
}

/// What the destination said after the manifest was pushed by digest.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `Docker-Content-Digest` of the PUT response.
    pub pushed_digest_header: Option<String>,
    /// `Docker-Content-Digest` of the GET-by-digest response.
    pub fetched_digest_header: Option<String>,
    /// sha256 of the bytes fetched by digest.
    pub fetched_sha256: String,
    /// Every blob the manifest names, with the size the destination reports.
    pub blobs: Vec<(BlobRef, Option<u64>)>,
}

/// One tag, read back after it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct TagCheck {
    pub tag: String,
    pub pushed_digest_header: Option<String>,
    pub fetched_digest_header: Option<String>,
    /// sha256 of the bytes the tag resolves to.
    pub resolved_sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CrossCheck {
    pub ok: bool,
    pub pushed_digest_header: Option<String>,
    pub fetched_digest_header: Option<String>,
    pub fetched_sha256: String,
    pub blobs_verified: u64,
    pub tags: Vec<TagCheck>,
}

/// Every failed identity check of a manifest pushed as `digest`; empty
/// when all hold. A missing header is not trusted: the fetched bytes are
/// hashed instead, and that hash must equal `digest`.
pub fn check_digest(digest: &str, o: &Observed) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(h) = &o.pushed_digest_header
        && h != digest
    {
        failures.push(format!(
            "the registry reported Docker-Content-Digest {h} for the manifest pushed as {digest}"
        ));
    }
    if let Some(h) = &o.fetched_digest_header
        && h != digest
    {
        failures.push(format!(
            "the manifest fetched by digest came with Docker-Content-Digest {h}, not {digest}"
        ));
    }
    if o.fetched_sha256 != digest {
        failures.push(format!(
            "the manifest fetched by digest hashes to {}, not {digest} (the registry serves other bytes than were pushed)",
            o.fetched_sha256
        ));
    }
    for (b, found) in &o.blobs {
        match found {
            None => failures.push(format!(
                "blob {} named by the manifest is missing",
                b.digest
            )),
            Some(s) if *s != b.size => failures.push(format!(
                "blob {} has {s} bytes at the destination, the manifest says {}",
                b.digest, b.size
            )),
            Some(_) => {}
        }
    }
    failures
}

/// Every failed check of a tag that should resolve to `digest`.
pub fn check_tag(digest: &str, t: &TagCheck) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, h) in [
        ("the tag's PUT", &t.pushed_digest_header),
        ("the tag's GET", &t.fetched_digest_header),
    ] {
        if let Some(h) = h
            && h != digest
        {
            failures.push(format!(
                "{what} reported Docker-Content-Digest {h}, not {digest}"
            ));
        }
    }
    if t.resolved_sha256 != digest {
        failures.push(format!(
            "tag {} resolves to {}, not {digest}",
            t.tag, t.resolved_sha256
        ));
    }
    failures
}

/// One published image, as `publish --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub image: String,
    /// `host[:port]`, or null for the local store.
    pub registry: Option<String>,
    pub repository: String,
    /// Where the digest can be fetched: `host/repo@digest` or `DIR@digest`.
    pub reference: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub blobs: BlobStats,
    pub cross_check: CrossCheck,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishRun {
    /// `HOST[:PORT][/PREFIX]` or the local store's folder.
    pub destination: String,
    pub images: Vec<PublishReport>,
}

#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub registry: Option<RegistryTarget>,
    /// Replaces the tags of image.toml.
    pub tag: Option<String>,
    pub quiet: bool,
}

/// The registry from `--registry`, else from `LANE_REGISTRY`, else none.
pub fn registry_from_env() -> Result<Option<RegistryTarget>> {
    match std::env::var(ENV_REGISTRY) {
        Ok(s) if !s.is_empty() => s
            .parse()
            .map(Some)
            .map_err(|e| anyhow!("{ENV_REGISTRY}: {e}")),
        _ => Ok(None),
    }
}

/// The local OCI image layout store.
pub fn local_store(ws: &Workspace) -> PathBuf {
    ws.root.join("target/local-registry")
}

/// Where images go: a registry that passed the preflight, or the local store.
/// `cargo xtask release` uses it the same way: [`Destination::prepare`]
/// before the build, [`Destination::publish`] per built image.
#[derive(Debug)]
pub enum Destination {
    Registry(Box<registry::Remote>),
    Local(PathBuf),
}

impl Destination {
    /// Runs the preflight for `specs` (their repositories on the registry);
    /// with no registry, the local store under `target/`.
    pub fn prepare(
        ws: &Workspace,
        registry: Option<&RegistryTarget>,
        specs: &[crate::spec::ImageSpec],
        progress: &Progress,
    ) -> Result<Destination> {
        match registry {
            Some(target) => {
                let repos: Vec<String> = specs
                    .iter()
                    .map(|s| target.repository(&s.repository))
                    .collect();
                let remote = registry::preflight(target, &repos)?;
                progress.say(format!(
                    "preflight ok: {} reachable, push to {} allowed ({})",
                    target.host(),
                    repos.join(", "),
                    remote.who()
                ));
                Ok(Destination::Registry(Box::new(remote)))
            }
            None => Ok(Destination::Local(local_store(ws))),
        }
    }

    /// `HOST[:PORT][/PREFIX]` or the local store's folder.
    pub fn describe(&self) -> String {
        match self {
            Destination::Registry(r) => r.target().to_string(),
            Destination::Local(p) => p.display().to_string(),
        }
    }

    /// Publishes one built image under `tags`, cross-checked.
    pub fn publish(
        &self,
        built: &build::BuiltImage,
        tags: &[String],
        progress: &Progress,
    ) -> Result<PublishReport> {
        let image = LocalImage::read(&built.name, &built.layout)?;
        match self {
            Destination::Registry(remote) => {
                let repo = remote.target().repository(&built.repository);
                progress.say(format!(
                    "publish {}: {}/{repo}@{}",
                    built.name,
                    remote.target().host(),
                    image.manifest_digest
                ));
                remote.publish(&image, &repo, tags, progress.quiet)
            }
            Destination::Local(root) => {
                let mut store = LocalStore::new(root.clone());
                progress.say(format!(
                    "publish {}: local store {}@{}",
                    built.name,
                    root.join(&built.repository).display(),
                    image.manifest_digest
                ));
                publish_local(&mut store, built, tags)
            }
        }
    }
}

/// Preflight, build, publish.
pub fn publish(ws: &Workspace, names: &[String], opts: &PublishOptions) -> Result<PublishRun> {
    let progress = Progress { quiet: opts.quiet };
    if let Some(t) = &opts.tag
        && !crate::spec::valid_tag(t)
    {
        bail!(
            "tag {t:?} is invalid; use up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"
        );
    }
    // Preflight: before anything is built.
    let specs = workspace::select(&ws.load_images()?, names)?;
    let destination = Destination::prepare(ws, opts.registry.as_ref(), &specs, &progress)?;
    let mut build_opts = BuildOptions::for_workspace(ws);
    build_opts.quiet = opts.quiet;
    let built = build::build(ws, names, &build_opts)?;
    let mut images = Vec::new();
    for b in &built.images {
        let tags = match &opts.tag {
            Some(t) => vec![t.clone()],
            None => b.tags.clone(),
        };
        images.push(destination.publish(b, &tags, &progress)?);
    }
    Ok(PublishRun {
        destination: destination.describe(),
        images,
    })
}

/// Publishes into the local store: by digest, cross-checked (every stored
/// byte re-hashed), and only then tagged, each tag read back.
pub fn publish_local(
    store: &mut LocalStore,
    built: &build::BuiltImage,
    tags: &[String],
) -> Result<PublishReport> {
    let p = store.publish_candidate(built)?;
    let dir = store.root.join(&built.repository);
    if !p.ok {
        bail!(
            "identity cross-check failed for {}@{}; no tag was applied:\n  - {}",
            dir.display(),
            built.manifest_digest,
            p.failures.join("\n  - ")
        );
    }
    let mut tag_checks = Vec::new();
    for t in tags {
        store.tag(&built.repository, &p.digest, t)?;
        tag_checks.push(TagCheck {
            tag: t.clone(),
            pushed_digest_header: None,
            fetched_digest_header: None,
            resolved_sha256: store.resolve_tag(&built.repository, t)?.unwrap_or_default(),
        });
    }
    Ok(PublishReport {
        image: built.name.clone(),
        registry: None,
        repository: built.repository.clone(),
        reference: format!("{}@{}", dir.display(), p.digest),
        digest: p.digest.clone(),
        tags: tags.to_vec(),
        blobs: p.blobs.clone(),
        cross_check: CrossCheck {
            ok: true,
            pushed_digest_header: None,
            fetched_digest_header: None,
            fetched_sha256: p.digest,
            blobs_verified: built.layers.len() as u64 + 1,
            tags: tag_checks,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(d: char, size: u64) -> BlobRef {
        BlobRef {
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size,
            media_type: String::new(),
        }
    }

    #[test]
    fn cross_check_reports_every_failure() {
        let good = sha256(b"m");
        let ok = Observed {
            pushed_digest_header: Some(good.clone()),
            fetched_digest_header: None,
            fetched_sha256: good.clone(),
            blobs: vec![(blob('a', 3), Some(3))],
        };
        assert!(check_digest(&good, &ok).is_empty());
        let bad = Observed {
            pushed_digest_header: Some(sha256(b"lie")),
            fetched_digest_header: Some(sha256(b"lie")),
            fetched_sha256: sha256(b"other"),
            blobs: vec![(blob('a', 3), None), (blob('b', 3), Some(4))],
        };
        let f = check_digest(&good, &bad);
        assert_eq!(f.len(), 5, "{f:#?}");
        assert!(f[0].contains("reported Docker-Content-Digest"));
        assert!(f[2].contains("hashes to"));
        assert!(f[3].contains("missing") && f[4].contains("4 bytes"));
    }

    #[test]
    fn tag_check_needs_the_digest() {
        let good = sha256(b"m");
        let t = TagCheck {
            tag: "v1".into(),
            pushed_digest_header: None,
            fetched_digest_header: Some(good.clone()),
            resolved_sha256: sha256(b"x"),
        };
        let f = check_tag(&good, &t);
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("tag v1 resolves to"));
    }

    #[test]
    fn layout_parse_rehashes_the_manifest() {
        let manifest = br#"{"schemaVersion":2,"config":{"digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":2,"mediaType":"c"},"layers":[{"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":5,"mediaType":"l"}]}"#.to_vec();
        let d = sha256(&manifest);
        let index = format!(
            r#"{{"manifests":[{{"digest":"{d}","mediaType":"application/vnd.oci.image.manifest.v1+json"}}]}}"#
        );
        let m = manifest.clone();
        let img = LocalImage::parse("x", Path::new("/l"), index.as_bytes(), &move |_| {
            Ok(m.clone())
        })
        .unwrap();
        assert_eq!(img.manifest_digest, d);
        assert_eq!(img.blobs.len(), 2);
        assert_eq!(img.blobs[0].size, 5);
        assert_eq!(img.blobs[1].media_type, "c");
        let err = LocalImage::parse("x", Path::new("/l"), index.as_bytes(), &|_| {
            Ok(b"tampered".to_vec())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("hashes to"));
    }
}
