//! `cargo xtask promote`: its flags and its output, over `lane::promote`.

use crate::adapters::workspace::Workspace;
use crate::cli::ReadArgs;
use crate::lane::promote::{PromoteOptions, promote};
use crate::lane::verify::{self};
use anyhow::Result;
use std::process::ExitCode;

/// Point a tag at a verified digest, without re-building.
///
/// Verifies REPO@sha256:<hex> first and refuses if it does not verify.
/// With --to, copies the image, its blobs and its evidence to
/// OTHER_REPO by digest and verifies it there. Then moves TAG and reads
/// it back: it must resolve to exactly that digest. Refuses tag-only
/// references.
#[derive(clap::Args)]
pub struct Args {
    /// The tag to point at the digest.
    #[arg(long)]
    pub tag: String,
    /// Promote into another repository (copy by digest).
    #[arg(long, value_name = "OTHER_REPO")]
    pub to: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args { tag, to, read } = args;
    let (location, repository, digest) = verify::parse_digest_reference(&read.reference)?;
    let tag = tag.parse().map_err(|e| anyhow::anyhow!("--tag: {e}"))?;
    let to = match to {
        Some(t) => Some(t.parse().map_err(|e| anyhow::anyhow!("--to: {e}"))?),
        None => None,
    };
    let (policy, mut store) = read.open(ws, location)?;
    let opts = PromoteOptions {
        repository,
        digest,
        tag,
        to,
        allow_local_builder: read.allow_local_builder,
    };
    let r = promote(store.as_mut(), &policy, &opts)?;
    if read.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "promoted {}@{} -> {}:{} (was {}); the tag reads back as {}",
            r.from,
            r.digest,
            r.repository,
            r.tag,
            r.previous
                .as_ref()
                .map_or("unset".to_string(), |d| d.to_string()),
            r.resolves_to
        );
    }
    Ok(ExitCode::SUCCESS)
}
