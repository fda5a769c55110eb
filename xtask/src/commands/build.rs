//! `cargo xtask build`: its flags and its output, over `lane::build`.

use crate::adapters::workspace::Workspace;
use crate::cli::CacheArgs;
use crate::lane::build::{BuildOptions, build, plan};
use crate::report::Reporter;
use anyhow::Result;
use std::process::ExitCode;

/// Build images into OCI image layouts under target/images/<IMAGE>/.
///
/// Rust payloads are built with `cargo build --locked --release` in a
/// cleared environment; layers are deterministic tar+gzip, cached by
/// their inputs in target/lane-cache/. Prints each image's manifest digest.
#[derive(clap::Args)]
pub struct Args {
    /// Images to build (default: all); their workspace bases are built too.
    pub images: Vec<String>,
    /// Print {"images":[{name, manifest_digest, config_digest, layout, layers}]}.
    #[arg(long)]
    pub json: bool,
    /// Print the plan (images, layers, every entry, binaries) and build nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Images built at once (default: the machine's cores); the digests
    /// are the same for any value.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args {
        images,
        json,
        dry_run,
        cache,
        jobs,
    } = args;
    let mut opts = BuildOptions::for_workspace(ws);
    opts.quiet = json;
    if let Some(n) = jobs {
        opts.jobs = usize::from(n);
    }
    if cache.shared(false).is_some() && !dry_run {
        // Who runs decides whether the shared cache takes writes: only a
        // verified CI identity the committed policy trusts (no policy, no
        // writes).
        let progress = Reporter { quiet: json };
        let authoritative = match ws.policy() {
            Ok((policy, _)) => {
                let builder =
                    crate::adapters::oidc::builder_run(&ws.root, &policy, false, &progress)?;
                crate::adapters::oidc::authoritative(&policy, &builder)
            }
            Err(_) => false,
        };
        opts.shared_cache = cache.shared(authoritative);
    }
    if dry_run {
        let (plan, _) = plan(ws, &images, &opts)?;
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    let report = build(ws, &images, &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for i in &report.images {
            println!(
                "{}\t{}\t{} layers\t{}",
                i.name,
                i.manifest_digest,
                i.layers.len(),
                i.layout.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
