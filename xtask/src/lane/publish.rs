//! The publish engine (`cargo xtask publish`, and the store a release
//! and a read open): the OCI layouts `build` writes, published by
//! digest, read back and cross-checked, and only then tagged.
//!
//! Order: preflight (before any build work), build, then per image: blobs
//! the destination lacks, the manifest's exact bytes by digest, the identity
//! cross-check, the tags (each read back). A failed check leaves every tag
//! where it was.
//!
//! Stores: a registry ([`RegistryStore`], `--registry`), or with no registry
//! configured the local OCI image layout store
//! `target/local-registry/<repository>/` ([`LocalStore`]), through the one
//! [`Store`] trait, with the same cross-check.

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::adapters::local_store::LocalStore;
use crate::adapters::registry::RegistryTarget;
use crate::adapters::registry_store::RegistryStore;
use crate::adapters::workspace::{self, Workspace};
use crate::lane::build::{self, BuildOptions};
use crate::report::Reporter;
use lane_core::distribution::{BuiltImage, PublishReport, TagCheck};
use lane_core::id::{Repository, Tag};
use lane_core::store::Store;

pub use crate::adapters::registry::ENV_REGISTRY;

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

/// The store images go to: the registry (`--registry`, else
/// `LANE_REGISTRY`), or the embedded local store under `target/`.
pub fn open_store(
    ws: &Workspace,
    registry: Option<RegistryTarget>,
    quiet: bool,
) -> Result<Box<dyn Store>> {
    let registry = match registry {
        Some(r) => Some(r),
        None => registry_from_env()?,
    };
    Ok(match registry {
        Some(target) => Box::new(RegistryStore::new(target, quiet)),
        None => Box::new(LocalStore::new(ws.root.join(LOCAL_STORE))),
    })
}

/// The embedded local store, relative to the workspace root.
pub const LOCAL_STORE: &str = "target/local-registry";

/// Preflight, build, publish.
pub fn publish(ws: &Workspace, names: &[String], opts: &PublishOptions) -> Result<PublishRun> {
    let progress = Reporter { quiet: opts.quiet };
    let tag: Option<Tag> = match &opts.tag {
        Some(t) => Some(t.parse().map_err(|e| anyhow!("--tag: {e}"))?),
        None => None,
    };
    let mut store = open_store(ws, opts.registry.clone(), opts.quiet)?;
    // Preflight: before anything is built.
    let specs = workspace::select(&ws.load_images()?, names)?;
    let repositories: Vec<Repository> = specs.iter().map(|s| s.repository.clone()).collect();
    store.preflight(&repositories)?;
    progress.say(format!(
        "preflight ok: {}, push to {} allowed",
        store.describe(),
        repositories
            .iter()
            .map(Repository::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut build_opts = BuildOptions::for_workspace(ws);
    build_opts.quiet = opts.quiet;
    let built = build::build(ws, names, &build_opts)?;
    let mut images = Vec::new();
    for b in &built.images {
        let tags = match &tag {
            Some(t) => vec![t.clone()],
            None => b.tags.clone(),
        };
        progress.say(format!(
            "publish {}: {}@{}",
            b.name,
            store.subject_name(&b.repository),
            b.manifest_digest
        ));
        images.push(publish_image(store.as_mut(), b, &tags)?);
    }
    Ok(PublishRun {
        destination: store.describe(),
        images,
    })
}

/// Publishes one built image into `store`: by digest, cross-checked (what
/// the store holds re-hashed), and only then tagged, each tag read back.
pub fn publish_image(
    store: &mut dyn Store,
    built: &BuiltImage,
    tags: &[Tag],
) -> Result<PublishReport> {
    let p = store.publish_candidate(built)?;
    let subject = store.subject_name(&built.repository);
    if !p.ok {
        bail!(
            "identity cross-check failed for {subject}@{}; no tag was applied:\n  - {}",
            built.manifest_digest,
            p.failures.join("\n  - ")
        );
    }
    let mut cross_check = p.cross_check.clone();
    for t in tags {
        // `tag` reads the tag back and fails unless it resolves to the
        // digest (or names the run that moved it since).
        store.tag(&built.repository, &p.digest, t)?;
        cross_check.tags.push(TagCheck {
            tag: t.to_string(),
            pushed_digest_header: None,
            fetched_digest_header: None,
            resolved_sha256: p.digest.to_string(),
        });
    }
    Ok(PublishReport {
        image: built.name.clone(),
        registry: store.is_registry().then(|| {
            subject
                .split_once('/')
                .map_or(subject.clone(), |(h, _)| h.to_string())
        }),
        // The repository as the store names it (with a registry's path prefix).
        repository: subject
            .split_once('/')
            .map_or(built.repository.to_string(), |(_, r)| r.to_string()),
        reference: format!("{subject}@{}", p.digest),
        digest: p.digest.clone(),
        tags: tags.to_vec(),
        blobs: p.blobs.clone(),
        cross_check,
    })
}
