//! The promote engine (`cargo xtask promote REPO@sha256:... --tag TAG [--to OTHER_REPO]`): move a
//! tag to a verified digest, never re-building. The digest is verified in its
//! repository; with `--to` the image, its blobs and its evidence are copied
//! by digest (a registry mounts the blobs, see `lane_core::store::copy`) and
//! verified again in the target before the tag moves; the tag is then read
//! back and must resolve to exactly that digest.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::lane::verify::{self, Verdict};
use lane_core::distribution::BlobStats;
use lane_core::gates::Policy;
use lane_core::id::{Digest, Repository, Tag};
use lane_core::store::Store;

#[derive(Debug, Clone)]
pub struct PromoteOptions {
    pub repository: Repository,
    pub digest: Digest,
    pub tag: Tag,
    pub to: Option<Repository>,
    pub allow_local_builder: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromoteReport {
    pub digest: Digest,
    pub from: Repository,
    pub repository: Repository,
    pub tag: Tag,
    /// What the tag pointed at before (None: a new tag).
    pub previous: Option<Digest>,
    /// What the tag resolves to after the move, read back from the store.
    pub resolves_to: Digest,
    pub copied: bool,
    /// With `--to`: how each blob got into the target repository (a
    /// registry mounts them; `uploaded` counts blobs copied through memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs: Option<BlobStats>,
}

/// Verifies, copies (with `--to`), tags and reads back. A digest that does
/// not verify is refused with every reason.
pub fn promote(
    store: &mut dyn Store,
    policy: &Policy,
    opts: &PromoteOptions,
) -> Result<PromoteReport> {
    let target = opts.to.clone().unwrap_or_else(|| opts.repository.clone());
    let refuse = |repo: &Repository, v: &Verdict| -> Result<()> {
        if !v.verified {
            bail!(
                "refusing to promote {repo}@{}: it does not verify as an accepted release:\n  - {}",
                v.digest,
                v.reasons.join("\n  - ")
            );
        }
        Ok(())
    };
    let (_, v) = verify::verify(
        store,
        &opts.repository,
        &opts.digest,
        policy,
        opts.allow_local_builder,
    )?;
    refuse(&opts.repository, &v)?;
    let copied = target != opts.repository;
    let mut blobs = None;
    if copied {
        blobs = Some(lane_core::store::copy(
            store,
            &opts.repository,
            &opts.digest,
            &target,
        )?);
        let (_, v) = verify::verify(
            store,
            &target,
            &opts.digest,
            policy,
            opts.allow_local_builder,
        )?;
        refuse(&target, &v)?;
    }
    let previous = store.resolve_tag(&target, &opts.tag)?;
    store.tag(&target, &opts.digest, &opts.tag)?;
    let resolves_to = store.resolve_tag(&target, &opts.tag)?;
    if resolves_to.as_ref() != Some(&opts.digest) {
        bail!(
            "tag {target}:{} reads back as {resolves_to:?}, not {}: someone moved it concurrently; run audit {target}:{}",
            opts.tag,
            opts.digest,
            opts.tag
        );
    }
    Ok(PromoteReport {
        digest: opts.digest.clone(),
        from: opts.repository.clone(),
        repository: target,
        tag: opts.tag.clone(),
        previous,
        resolves_to: opts.digest.clone(),
        copied,
        blobs,
    })
}
