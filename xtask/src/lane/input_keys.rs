//! An image's input key (issue 25, point 7): one digest over everything
//! the image's bytes are made of, computed from the plan and git's index
//! without reading a file. A fresh runner looks the key up (the local
//! cache, then the shared cache in a registry) to learn the manifest
//! digest an earlier run built from the same inputs; when the target
//! already holds that digest with reusable evidence whose signed gate
//! statement names the same key, the image is not built again.
//!
//! The key covers: the lane's version and layer encoder, the architecture,
//! the time and the revision stamped into images, the source URL, the
//! whole image definition (image.toml as parsed), every layer entry (path,
//! kind, mode, owner, and its content: the git blob of a file, the
//! filename, size and sha256 of a locked .deb or wheel), the base (the
//! pinned digest, or the workspace base's own key) and the workspace's
//! Rust sources (the blobs of every member package's folder, Cargo.toml,
//! Cargo.lock, `.cargo/`, the toolchain file) and `rustc -vV`: they make
//! the binaries, and the lane itself (`cargo xtask` is a member), so a
//! change of the lane's code is a change of every key. Anything it cannot name this way (a dirty tree,
//! an untracked file, a path dependency outside the workspace) means no
//! key, and the image is built as before.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Value, json};

use crate::adapters::git_index::GitIndex;
use crate::adapters::workspace::{self, Workspace};
use crate::lane::plan::BuildPlan;
use lane_core::id::Digest;
use lane_core::spec::BaseRef;

/// Fills in `input_key` of every image of `plan` that has one.
pub fn fill(ws: &Workspace, plan: &mut BuildPlan, index: &GitIndex) -> Result<()> {
    // The workspace's Rust sources are in every key: they hold the
    // binaries, and the lane itself (`cargo xtask` is a member).
    let Some(rust) = rust_fingerprint(ws, plan, index)? else {
        return Ok(());
    };
    let mut keys: BTreeMap<String, Option<Digest>> = BTreeMap::new();
    for i in 0..plan.images.len() {
        let key = key_of(plan, i, index, &rust, &keys);
        keys.insert(plan.images[i].spec.name.clone(), key.clone());
        plan.images[i].input_key = key;
    }
    Ok(())
}

/// The key of `plan.images[i]`, its workspace base's key already in `keys`
/// (the plan lists bases first).
fn key_of(
    plan: &BuildPlan,
    i: usize,
    index: &GitIndex,
    rust: &Digest,
    keys: &BTreeMap<String, Option<Digest>>,
) -> Option<Digest> {
    let image = &plan.images[i];
    let base = match &image.spec.base {
        BaseRef::Scratch => json!("scratch"),
        BaseRef::Pinned { repository, digest } => {
            json!({ "pinned": format!("{repository}@{digest}") })
        }
        BaseRef::Workspace { image } => json!({ "workspace": keys.get(image)?.as_ref()? }),
    };
    let mut layers = Vec::new();
    for l in &image.layers {
        let mut entries = Vec::new();
        for e in &l.entries {
            let content = match (e.kind, &e.source, &e.target) {
                ("file", Some(src), _) => match plan
                    .binaries
                    .iter()
                    .find(|b| b.path.to_string_lossy() == src.as_str())
                {
                    Some(b) => json!({ "cargo": b.request }),
                    None => json!(index.file(std::path::Path::new(src))?),
                },
                (_, Some(src), _) => json!(src),
                (_, None, Some(target)) => json!({ "symlink": target }),
                _ => Value::Null,
            };
            entries.push(json!([e.path, e.kind, e.mode, e.owner, content]));
        }
        layers.push(json!({ "name": l.name, "entries": entries }));
    }
    let doc = json!({
        "lane": env!("CARGO_PKG_VERSION"),
        "encoder": plan.encoder,
        "triple": plan.toolchain.triple,
        "epoch": plan.source.source_date_epoch,
        "revision": plan.source.revision,
        "source": plan.source.source_url,
        "spec": image.spec,
        "base": base,
        "layers": layers,
        "rust": rust,
    });
    Some(lane_core::reuse::input_key(&doc))
}

/// What the workspace's binaries are built from, besides Cargo.lock's
/// registry crates: every tracked file of the member packages' folders,
/// the workspace's Cargo.toml and Cargo.lock, `.cargo/` and the toolchain
/// file, and the compiler (`rustc -vV`). `None` when a local package lies
/// outside the workspace.
fn rust_fingerprint(ws: &Workspace, plan: &BuildPlan, index: &GitIndex) -> Result<Option<Digest>> {
    let Some(mut dirs) = workspace::rust_sources(ws)? else {
        return Ok(None);
    };
    dirs.extend(
        [
            "Cargo.toml",
            "Cargo.lock",
            ".cargo",
            "rust-toolchain",
            "rust-toolchain.toml",
        ]
        .map(String::from),
    );
    dirs.sort();
    dirs.dedup();
    let mut files: Vec<(&str, &str, &str)> = dirs.iter().flat_map(|d| index.under(d)).collect();
    files.sort();
    files.dedup();
    Ok(Some(lane_core::reuse::input_key(&json!({
        "rustc": plan.toolchain.rustc,
        "files": files,
    }))))
}
