//! `cargo xtask publish`: the OCI layouts `build` writes, published by
//! digest, read back and cross-checked, and only then tagged.
//!
//! Order: preflight (before any build work), build, then per image: blobs
//! the destination lacks, the manifest's exact bytes by digest, the identity
//! cross-check, the tags (each read back). A failed check leaves every tag
//! where it was.
//!
//! Destinations: a registry ([`crate::adapters::registry`], `--registry`), or with no
//! registry configured the local OCI image layout store
//! `target/local-registry/<repository>/`, with the same cross-check.
//!
//! Pure parts: [`LocalImage::parse`], [`check_digest`], [`check_tag`].

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::commands::build::{self, BuildOptions};
use crate::report::Reporter;

use crate::adapters::local_store::LocalStore;
use crate::adapters::registry::{self, RegistryTarget};
use crate::adapters::workspace::{self, Workspace};
use lane_core::distribution::BuiltImage;
use lane_core::distribution::CrossCheck;
use lane_core::distribution::PublishReport;
use lane_core::distribution::TagCheck;
use lane_core::store::Store;

/// Names the registry when `--registry` is not given.
pub const ENV_REGISTRY: &str = "LANE_REGISTRY";

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
        specs: &[lane_core::spec::ImageSpec],
        progress: &Reporter,
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
        built: &BuiltImage,
        tags: &[String],
        progress: &Reporter,
    ) -> Result<PublishReport> {
        let image = crate::adapters::layout::Layout::at(&built.name, &built.layout).image()?;
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
    let progress = Reporter { quiet: opts.quiet };
    if let Some(t) = &opts.tag {
        t.parse::<lane_core::id::Tag>()
            .map_err(|e| anyhow::anyhow!("--tag: {e}"))?;
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
    built: &BuiltImage,
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
