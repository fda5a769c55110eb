//! OCI image config, manifest and index documents, as canonical bytes.
//!
//! Pure: values in, bytes and digests out. Each document is built with the
//! `oci-spec` types, turned into a `serde_json::Value` (whose maps are
//! ordered by key) and serialised once, compactly. Those exact bytes are
//! hashed, written to the layout and pushed; nothing re-serialises them.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest as OciDigest, HistoryBuilder,
    ImageConfiguration, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::Serialize;

use crate::id::Digest;
use crate::layer::{LayerDigests, sha256};
use crate::spec::RuntimeConfig;

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";

/// A JSON document as the exact bytes that are hashed and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl Blob {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Serialises once with keys in byte order and no insignificant whitespace.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Blob> {
    let v = serde_json::to_value(value).context("encoding a JSON document")?;
    let bytes = serde_json::to_vec(&v).context("encoding a JSON document")?;
    let digest = sha256(&bytes);
    Ok(Blob { bytes, digest })
}

/// A layer as the manifest and the config see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    /// `created_by` of the history entry (`lane layer app`).
    pub created_by: String,
}

impl LayerRecord {
    pub fn new(d: &LayerDigests, created_by: String) -> LayerRecord {
        LayerRecord {
            digest: d.digest.clone(),
            diff_id: d.diff_id.clone(),
            size: d.size,
            created_by,
        }
    }
}

/// What an image inherits from a base image of the workspace.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    pub name: String,
    pub manifest_digest: String,
    pub layers: Vec<LayerRecord>,
    pub config: RuntimeConfig,
}

/// Facts about the source the image is built from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceFacts {
    pub revision: String,
    pub source_date_epoch: u64,
    pub source_url: String,
}

/// Everything that goes into one image's documents.
pub struct ImageInputs<'a> {
    pub arch: &'a str,
    pub runtime: &'a RuntimeConfig,
    pub base: Option<&'a BaseImage>,
    pub layers: &'a [LayerRecord],
    pub source: &'a SourceFacts,
    pub ref_name: &'a str,
    /// The names `docker load` gives the image (`REPOSITORY:TAG`).
    pub repo_tags: &'a [String],
}

/// The documents of one image: the three OCI ones and Docker's
/// `manifest.json` of the same layout.
pub struct ImageDocs {
    pub config: Blob,
    pub manifest: Blob,
    pub index: Blob,
    /// Docker's `manifest.json` ([`docker_manifest`]); never pushed.
    pub docker_manifest: Blob,
    /// Base layers followed by the image's own layers.
    pub layers: Vec<LayerRecord>,
    /// The effective runtime config (base merged with the image's own).
    pub runtime: RuntimeConfig,
}

pub fn rfc3339(epoch: u64) -> String {
    chrono::DateTime::from_timestamp(epoch as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The effective runtime config: the image's settings over its base's.
pub fn merge_runtime(base: Option<&RuntimeConfig>, own: &RuntimeConfig) -> RuntimeConfig {
    let Some(base) = base else { return own.clone() };
    let mut env = base.env.clone();
    env.extend(own.env.clone());
    let mut labels = base.labels.clone();
    labels.extend(own.labels.clone());
    let mut exposed_ports = base.exposed_ports.clone();
    for p in &own.exposed_ports {
        if !exposed_ports.contains(p) {
            exposed_ports.push(p.clone());
        }
    }
    // As in a Dockerfile: a new entrypoint resets the inherited cmd.
    let (entrypoint, cmd) = if !own.entrypoint.is_empty() {
        (own.entrypoint.clone(), own.cmd.clone())
    } else if !own.cmd.is_empty() {
        (base.entrypoint.clone(), own.cmd.clone())
    } else {
        (base.entrypoint.clone(), base.cmd.clone())
    };
    RuntimeConfig {
        entrypoint,
        cmd,
        env,
        user: own.user.clone().or_else(|| base.user.clone()),
        workdir: own.workdir.clone().or_else(|| base.workdir.clone()),
        exposed_ports,
        labels,
    }
}

pub fn arch_of_triple(triple: &str) -> &'static str {
    match triple.split('-').next() {
        Some("x86_64") => "amd64",
        Some("aarch64") => "arm64",
        Some("riscv64gc") => "riscv64",
        Some("s390x") => "s390x",
        Some("powerpc64le") => "ppc64le",
        _ => "unknown",
    }
}

fn digest(s: &str) -> Result<OciDigest> {
    OciDigest::from_str(s).with_context(|| format!("invalid digest {s:?}"))
}

fn descriptor(
    media: MediaType,
    d: &Digest,
    size: u64,
    annotations: Option<HashMap<String, String>>,
) -> Result<Descriptor> {
    let mut b = DescriptorBuilder::default()
        .media_type(media)
        .digest(digest(d.as_str())?)
        .size(size);
    if let Some(a) = annotations {
        b = b.annotations(a);
    }
    Ok(b.build()?)
}

/// Builds config, manifest and index for one image.
pub fn image_docs(inputs: &ImageInputs) -> Result<ImageDocs> {
    let created = rfc3339(inputs.source.source_date_epoch);
    let runtime = merge_runtime(inputs.base.map(|b| &b.config), inputs.runtime);
    let mut layers: Vec<LayerRecord> = inputs.base.map(|b| b.layers.clone()).unwrap_or_default();
    layers.extend(inputs.layers.iter().cloned());

    let mut cfg = ConfigBuilder::default();
    let mut env: Vec<String> = runtime
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !runtime.env.contains_key("PATH") {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    cfg = cfg.env(env);
    if !runtime.entrypoint.is_empty() {
        cfg = cfg.entrypoint(runtime.entrypoint.clone());
    }
    if !runtime.cmd.is_empty() {
        cfg = cfg.cmd(runtime.cmd.clone());
    }
    if let Some(u) = &runtime.user {
        cfg = cfg.user(u.clone());
    }
    if let Some(w) = &runtime.workdir {
        cfg = cfg.working_dir(w.clone());
    }
    if !runtime.exposed_ports.is_empty() {
        cfg = cfg.exposed_ports(runtime.exposed_ports.clone());
    }
    if !runtime.labels.is_empty() {
        cfg = cfg.labels(
            runtime
                .labels
                .clone()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        );
    }
    let history = layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(l.created_by.clone())
                .build()
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let config: ImageConfiguration = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::from(inputs.arch))
        .os(Os::Linux)
        .config(cfg.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    layers
                        .iter()
                        .map(|l| l.diff_id.to_string())
                        .collect::<Vec<_>>(),
                )
                .build()?,
        )
        .history(history)
        .build()?;
    let config = canonical_json(&config)?;

    let mut annotations = HashMap::from([
        (ANNOTATION_CREATED.to_string(), created),
        (
            ANNOTATION_REVISION.to_string(),
            inputs.source.revision.clone(),
        ),
        (
            ANNOTATION_SOURCE.to_string(),
            inputs.source.source_url.clone(),
        ),
    ]);
    if let Some(b) = inputs.base {
        annotations.insert(ANNOTATION_BASE_DIGEST.into(), b.manifest_digest.clone());
        annotations.insert(ANNOTATION_BASE_NAME.into(), b.name.clone());
    }
    let manifest: ImageManifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config.digest,
            config.size(),
            None,
        )?)
        .layers(
            layers
                .iter()
                .map(|l| descriptor(MediaType::ImageLayerGzip, &l.digest, l.size, None))
                .collect::<Result<Vec<_>>>()?,
        )
        .annotations(annotations)
        .build()?;
    let manifest = canonical_json(&manifest)?;

    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor(
            MediaType::ImageManifest,
            &manifest.digest,
            manifest.size(),
            Some(HashMap::from([(
                ANNOTATION_REF_NAME.to_string(),
                inputs.ref_name.to_string(),
            )])),
        )?])
        .build()?;
    let index = canonical_json(&index)?;
    let layer_digests: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
    let docker_manifest = docker_manifest(&config.digest, &layer_digests, inputs.repo_tags)?;
    Ok(ImageDocs {
        config,
        manifest,
        index,
        docker_manifest,
        layers,
        runtime,
    })
}

/// The `oci-layout` file of an OCI image layout.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The file name of Docker's image-archive manifest in a layout.
pub const DOCKER_MANIFEST: &str = "manifest.json";

/// One entry of Docker's `manifest.json` (the `docker save` format).
#[derive(Serialize)]
struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Docker's `manifest.json` for one image whose blobs sit in an OCI layout:
/// `[{"Config":"blobs/sha256/HEX","RepoTags":[..],"Layers":["blobs/sha256/HEX",..]}]`.
///
/// `docker save` on Engine 25+ writes it next to `index.json`; with it,
/// `docker load` of a tar of the layout works on engines that cannot read an
/// OCI layout (Docker 20.10, which also takes the gzip layer blobs as they
/// are) and the image ID is the config digest. Engines that read OCI
/// layouts use `index.json`. Canonical bytes: a function of its arguments.
pub fn docker_manifest(config: &Digest, layers: &[Digest], repo_tags: &[String]) -> Result<Blob> {
    canonical_json(&[DockerArchiveEntry {
        config: config.blob_path(),
        repo_tags: repo_tags.to_vec(),
        layers: layers.iter().map(Digest::blob_path).collect(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inputs_docs(labels: BTreeMap<String, String>) -> ImageDocs {
        let runtime = RuntimeConfig {
            entrypoint: vec!["/app".into()],
            labels,
            exposed_ports: vec!["8080/tcp".into(), "9090/tcp".into()],
            ..Default::default()
        };
        let layers = vec![LayerRecord {
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            diff_id: format!("sha256:{}", "b".repeat(64)).parse().unwrap(),
            size: 10,
            created_by: "lane layer app".into(),
        }];
        let source = SourceFacts {
            revision: "abc".into(),
            source_date_epoch: 0,
            source_url: "https://x".into(),
        };
        image_docs(&ImageInputs {
            arch: "amd64",
            runtime: &runtime,
            base: None,
            layers: &layers,
            source: &source,
            ref_name: "latest",
            repo_tags: &["platform/x:latest".to_string()],
        })
        .unwrap()
    }

    #[test]
    fn docker_manifest_names_the_layout_blobs() {
        let docs = inputs_docs(BTreeMap::new());
        let text = String::from_utf8(docs.docker_manifest.bytes).unwrap();
        assert_eq!(
            text,
            format!(
                r#"[{{"Config":"blobs/sha256/{}","Layers":["blobs/sha256/{}"],"RepoTags":["platform/x:latest"]}}]"#,
                docs.config.digest.hex(),
                "a".repeat(64)
            )
        );
    }

    #[test]
    fn documents_are_canonical() {
        let labels: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("l{i}"), "v".to_string()))
            .collect();
        let a = inputs_docs(labels.clone());
        for _ in 0..5 {
            let b = inputs_docs(labels.clone());
            assert_eq!(
                a.config.bytes, b.config.bytes,
                "HashMap order must not leak"
            );
            assert_eq!(a.manifest.bytes, b.manifest.bytes);
        }
        let text = String::from_utf8(a.config.bytes.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"architecture":"amd64","config":{"Entrypoint":["/app"],"Env":["PATH="#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""created":"1970-01-01T00:00:00Z""#),
            "{text}"
        );
        assert!(
            text.contains(r#""rootfs":{"diff_ids":["sha256:bbbb"#),
            "{text}"
        );
        let m = String::from_utf8(a.manifest.bytes.clone()).unwrap();
        assert!(
            m.contains(r#""mediaType":"application/vnd.oci.image.layer.v1.tar+gzip""#),
            "{m}"
        );
        assert!(
            m.contains(&format!(r#""digest":"{}""#, a.config.digest)),
            "{m}"
        );
        assert_eq!(a.manifest.digest, sha256(&a.manifest.bytes));
    }

    #[test]
    fn runtime_merge_follows_dockerfile_rules() {
        let base = RuntimeConfig {
            entrypoint: vec!["/base".into()],
            cmd: vec!["x".into()],
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "1".into())]),
            user: Some("1".into()),
            ..Default::default()
        };
        let own = RuntimeConfig {
            entrypoint: vec!["/own".into()],
            env: BTreeMap::from([("B".into(), "2".into())]),
            ..Default::default()
        };
        let m = merge_runtime(Some(&base), &own);
        assert_eq!(m.entrypoint, ["/own"]);
        assert!(m.cmd.is_empty());
        assert_eq!(m.env["A"], "1");
        assert_eq!(m.env["B"], "2");
        assert_eq!(m.user.as_deref(), Some("1"));
    }
}
