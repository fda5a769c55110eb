//! `cargo xtask verify`: its flags and its output, over `lane::verify`.

use crate::adapters::workspace::Workspace;
use crate::cli::ReadArgs;
use crate::lane::verify::{parse_digest_reference, verify};
use anyhow::Result;
use lane_core::verify::*;
use std::process::ExitCode;

/// Human output of a verdict.
pub fn summary(reference: &str, v: &Verdict) -> String {
    let mut out = if v.verified {
        format!("{reference}: VERIFIED, an accepted release of the lane\n")
    } else {
        format!(
            "{reference}: NOT VERIFIED ({} reason{})\n",
            v.reasons.len(),
            if v.reasons.len() == 1 { "" } else { "s" }
        )
    };
    for r in &v.reasons {
        out.push_str(&format!("  - {r}\n"));
    }
    for s in &v.statements {
        out.push_str(&format!(
            "  statement {} ({}) signature {}\n",
            s.artifact, s.predicate_type, s.signature
        ));
    }
    out
}

/// Check that a digest is an accepted release of the lane.
///
/// Reads the evidence attached to the digest (referrers of the digest),
/// and checks: every envelope is signed by a key in [signing]
/// trusted_keys of ci/release-policy.toml; every statement's subject is
/// exactly this digest; predicate types are SLSA provenance v1, in-toto
/// test-result v0.1 and the SPDX 2.3 SBOM, and nothing else; the builder
/// is trusted (a CI workflow; the local builder only for the local store,
/// with --allow-local-builder);
/// every required gate passed. Exits 0 only when all hold, and lists
/// every reason otherwise. Needs a digest: REPO@sha256:<hex>.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub read: ReadArgs,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let (location, repository, digest) = parse_digest_reference(&args.read.reference)?;
    let (policy, mut store) = args.read.open(ws, location)?;
    let read = &args.read;
    let (_, verdict) = verify(
        store.as_mut(),
        &repository,
        &digest,
        &policy,
        read.allow_local_builder,
    )?;
    if read.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print!("{}", summary(&read.reference, &verdict));
    }
    Ok(if verdict.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
