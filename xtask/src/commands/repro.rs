//! `cargo xtask repro`: its flags and its output, over `lane::repro`.

use crate::adapters::workspace::Workspace;
use crate::lane::repro::{check, repro};
use anyhow::Result;
use std::process::ExitCode;

/// Check that the build is reproducible: build twice and compare digests.
///
/// The second build runs from a copy of the source tree at another path,
/// under umask 077, with shuffled mtimes, with empty caches. Exits non-zero
/// and names the image, layer and first differing file on a mismatch.
#[derive(clap::Args)]
pub struct Args {
    /// Images to check (default: all).
    pub images: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args { images, json } = args;
    let report = repro(ws, &images, json)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for i in &report.images {
            let state = if i.equal { "reproducible" } else { "DIFFERS" };
            println!("{}\t{state}\t{}", i.name, i.first);
        }
    }
    check(&report)?;
    Ok(ExitCode::SUCCESS)
}
