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

/// Most bytes of a manifest, image index or referrers index the lane reads
/// from a store (the Distribution registry refuses larger manifests too).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Most bytes of a config or evidence blob (DSSE envelope, SBOM, release
/// record) the lane holds in memory.
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// Most bytes of a layer blob the lane holds in memory: a base layer pulled
/// from a registry, a layer `promote --to` copies when the registry cannot
/// mount it.
pub const MAX_LAYER_BYTES: u64 = 2 << 30;

/// Refuses `size` bytes of `what` above `limit` (one of the caps above),
/// naming the cap.
pub fn check_size(what: &str, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        anyhow::bail!(
            "{what} is {size} bytes, more than the {limit} the lane reads (docs/fault-matrix-parsers.md)"
        );
    }
    Ok(())
}

/// A registry base image's manifest, as `build` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseManifest {
    pub config: Digest,
    pub layers: Vec<Digest>,
}

/// Parses the manifest of the base `reference` (bytes already checked
/// against its digest): an OCI image manifest of one platform, config and
/// layers named by valid digests.
pub fn parse_base_manifest(reference: &str, bytes: &[u8]) -> Result<BaseManifest> {
    check_size(
        &format!("base {reference}: the manifest"),
        bytes.len() as u64,
        MAX_MANIFEST_BYTES,
    )?;
    let manifest: serde_json::Value = serde_json::from_slice(bytes)
        .with_context(|| format!("base {reference}: the manifest is not JSON"))?;
    if manifest["mediaType"] != "application/vnd.oci.image.manifest.v1+json"
        && manifest["config"]["mediaType"] != "application/vnd.oci.image.config.v1+json"
    {
        anyhow::bail!(
            "base {reference} is not an OCI image manifest (an index or another media type); pin the digest of one platform's manifest"
        );
    }
    let digest = |v: &serde_json::Value, what: &str| -> Result<Digest> {
        v.as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("base {reference}: {what} names no valid digest"))
    };
    let config = digest(&manifest["config"]["digest"], "the manifest's config")?;
    let layers = manifest["layers"]
        .as_array()
        .with_context(|| format!("base {reference}: the manifest has no layers"))?
        .iter()
        .map(|l| digest(&l["digest"], "a layer"))
        .collect::<Result<Vec<_>>>()?;
    Ok(BaseManifest { config, layers })
}

/// Parses the config of the base `reference` (bytes checked against its
/// digest): the diff_ids, one per layer of the manifest, and the runtime
/// configuration the image inherits.
pub fn parse_base_config(
    reference: &str,
    bytes: &[u8],
    layers: usize,
) -> Result<(Vec<Digest>, RuntimeConfig)> {
    check_size(
        &format!("base {reference}: the config"),
        bytes.len() as u64,
        MAX_DOCUMENT_BYTES,
    )?;
    let config: serde_json::Value = serde_json::from_slice(bytes)
        .with_context(|| format!("base {reference}: the config is not JSON"))?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .map(|d| {
            d.parse::<Digest>()
                .with_context(|| format!("base {reference}: diff_id {d:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if layers != diff_ids.len() {
        anyhow::bail!(
            "base {reference}: {layers} layers but {} diff_ids in its config",
            diff_ids.len()
        );
    }
    let c = &config["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let env = strings(&c["Env"])
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let labels = c["Labels"]
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
    Ok((diff_ids, runtime))
}

/// What an image inherits from a base image of the workspace.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    pub name: String,
    pub manifest_digest: String,
    pub layers: Vec<LayerRecord>,
    pub config: RuntimeConfig,
}

/// What of the source the image's documents carry. None of it comes from
/// the commit unless the policy stamps it: the time is [`FIXED_EPOCH`] (or
/// an explicit `SOURCE_DATE_EPOCH`), the revision is absent by default
/// (docs/identity-of-images.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceFacts {
    /// The commit, only when the policy sets `[identity] stamp =
    /// "revision"`: then the manifest's `org.opencontainers.image.revision`.
    pub revision: Option<String>,
    /// `created`, history and every file's mtime.
    pub source_date_epoch: u64,
    /// The committed source URL (`[workspace.metadata.lane] source`).
    pub source_url: String,
}

/// The time of every image unless `SOURCE_DATE_EPOCH` is set:
/// 1970-01-01T00:00:00Z, as ko and Jib do, so the time is no input.
pub const FIXED_EPOCH: u64 = 0;

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
            ANNOTATION_SOURCE.to_string(),
            inputs.source.source_url.clone(),
        ),
    ]);
    if let Some(revision) = &inputs.source.revision {
        annotations.insert(ANNOTATION_REVISION.to_string(), revision.clone());
    }
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
            revision: Some("abc".into()),
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

/// Hostile base image documents from a registry (docs/fault-matrix-parsers.md): the
/// manifest and config of a pinned base. No panic; errors name the base.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated};
    use proptest::prelude::*;

    const REF: &str = "registry.example.com/base@sha256:0";

    fn manifest() -> Vec<u8> {
        let d = |s: &[u8]| crate::layer::sha256(s);
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(b"c"), "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(b"l"), "size": 2}]
        }))
        .unwrap()
    }

    fn config() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/bin", "A=b=c"], "Entrypoint": ["/bin/x"], "Cmd": ["-h"],
                "User": "1000", "WorkingDir": "/w", "ExposedPorts": {"80/tcp": {}}, "Labels": {"k": "v"}},
            "rootfs": {"type": "layers", "diff_ids": [crate::layer::sha256(b"t")]}
        }))
        .unwrap()
    }

    fn check(m: &[u8], c: &[u8]) -> Result<(), TestCaseError> {
        match parse_base_manifest(REF, m) {
            Ok(bm) => {
                if let Err(e) = parse_base_config(REF, c, bm.layers.len()) {
                    clear_error(&e, REF)?;
                }
            }
            Err(e) => clear_error(&e, REF)?,
        }
        if let Err(e) = parse_base_config(REF, c, 1) {
            clear_error(&e, REF)?;
        }
        Ok(())
    }

    #[test]
    fn the_samples_parse_and_oversized_documents_are_refused() {
        let m = parse_base_manifest(REF, &manifest()).unwrap();
        let (diff_ids, runtime) = parse_base_config(REF, &config(), m.layers.len()).unwrap();
        assert_eq!(diff_ids.len(), 1);
        assert_eq!(runtime.env["A"], "b=c");
        let mut big = manifest();
        big.resize(MAX_MANIFEST_BYTES as usize + 1, b' ');
        let e = parse_base_manifest(REF, &big).unwrap_err().to_string();
        assert!(e.contains("more than the 4194304"), "{e}");
        let mut big = config();
        big.resize(MAX_DOCUMENT_BYTES as usize + 1, b' ');
        let e = parse_base_config(REF, &big, 1).unwrap_err().to_string();
        assert!(e.contains("more than the 67108864"), "{e}");
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn base_documents_arbitrary(m in hostile::bytes(512), c in hostile::bytes(512)) {
            check(&m, &c)?;
        }

        #[test]
        fn base_documents_mutated(m in mutated(manifest()), c in mutated(config())) {
            check(&m, &c)?;
        }
    }
}
