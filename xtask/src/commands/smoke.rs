//! `cargo xtask smoke`: run the exact image the lane built in the Docker
//! Engine, with its `[[smoke]]` commands from `image.toml`.
//!
//! This module is the pure part plus the file-system side: reading an OCI
//! layout back ([`crate::adapters::layout::Layout::smoke_image`], which re-hashes the manifest and config),
//! the `manifest.json` that lets engines without OCI-layout support load it
//! (`lane_core::oci::docker_manifest`), the identity rule ([`check_identity`]) and the
//! evaluation of one command's outcome ([`evaluate`]). The engine adapter
//! (bollard, async) is [`crate::adapters::engine`].

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::adapters::engine::{self, SmokeOptions};
use crate::adapters::workspace::{self, Workspace};
use crate::commands::build::{self, BuildOptions};
use lane_core::distribution::BuiltImage;
use lane_core::smoke::SmokeReport;

/// `cargo xtask smoke IMAGE`: checks that the engine is reachable, builds
/// the image, loads it and runs its smoke commands.
pub fn smoke(ws: &Workspace, name: &str, opts: &SmokeOptions) -> Result<SmokeReport> {
    let images = ws.load_images()?;
    let spec = workspace::select(&images, &[name.to_string()])?
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no image {name:?} in images/"))?;
    if spec.smoke.is_empty() && spec.python.is_none() {
        bail!(
            "image {name} declares no smoke command; add a [[smoke]] entry (name, command, expect_exit) to {}/image.toml",
            spec.dir
        );
    }
    // Fail before building when there is no engine to run the check in.
    engine::probe()?;
    let mut build_opts = BuildOptions::for_workspace(ws);
    build_opts.quiet = opts.quiet;
    let report = build::build(ws, &[name.to_string()], &build_opts)?;
    let built: &BuiltImage = report
        .images
        .iter()
        .find(|i| i.name == name)
        .with_context(|| format!("the build did not produce image {name}"))?;
    let image = crate::adapters::layout::Layout::at(name, &built.layout)
        .smoke_image(built.manifest_digest.as_str())?;
    let checks = crate::commands::drift::smoke_checks(ws, &spec, &built.layout)?;
    let opts = SmokeOptions {
        user: opts.user.clone().or_else(|| spec.smoke_user.clone()),
        ..opts.clone()
    };
    engine::smoke(&image, &checks, &opts)
}

/// Run the image's smoke commands in the Docker Engine, before publishing.
///
/// Builds IMAGE, loads that exact OCI layout into the engine (DOCKER_HOST,
/// else unix:///var/run/docker.sock), checks that the engine's image ID is
/// our digest, then runs every [[smoke]] entry of images/IMAGE/image.toml
/// in its own container created from the image ID: no network, read-only
/// root file system, no new privileges, all capabilities dropped, 256 MiB
/// memory, 128 pids, one CPU, a 1 MiB log, the image's user (image.toml's
/// `smoke_user` if set, else the image's config user, else nobody). Each command must exit with
/// expect_exit within timeout_secs and its output must match
/// expect_output. Containers and the temporary tag lane-smoke/IMAGE:RUN
/// are removed afterwards. Exits non-zero on any failure, including an
/// unreachable engine: the check is never skipped.
///
/// Example image.toml entry:
///
///   [[smoke]]
///   name = "version"
///   command = ["/usr/local/bin/hello", "--version"]
///   expect_exit = 0
///   expect_output = "^hello 0\\.1"
///   timeout_secs = 30
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The image to check (a folder under images/).
    pub image: String,
    /// Print the smoke report as JSON: image, image_id, engine, checks
    /// (command, exit_code, duration_ms, passed, failures, output).
    #[arg(long)]
    pub json: bool,
    /// Keep the loaded image tagged lane-smoke/IMAGE:RUN afterwards, to
    /// inspect it (`docker image inspect`); remove it with `docker rmi`.
    #[arg(long)]
    pub keep_image: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args {
        image,
        json,
        keep_image,
    } = args;
    let opts = SmokeOptions {
        keep_image,
        quiet: json,
        ..SmokeOptions::default()
    };
    let report = smoke(ws, &image, &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}\t{}\timage id {}\t{} {} ({} store)",
            report.image,
            report.manifest_digest,
            report.image_id,
            report.engine.address,
            report.engine.version,
            serde_json::to_value(report.engine.store)?
                .as_str()
                .unwrap_or("?")
        );
        for c in &report.checks {
            let state = if c.passed { "passed" } else { "FAILED" };
            let exit = c.exit_code.map_or_else(|| "-".into(), |e| e.to_string());
            println!("{}\t{state}\texit {exit}\t{} ms", c.name, c.duration_ms);
            for line in c.output.lines() {
                println!("  | {line}");
            }
        }
    }
    lane_core::smoke::check(&report)?;
    Ok(ExitCode::SUCCESS)
}
