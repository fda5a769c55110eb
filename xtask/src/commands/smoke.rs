//! `cargo xtask smoke`: its flags and its output, over `lane::smoke`.

use crate::adapters::engine::SmokeOptions;
use crate::adapters::workspace::Workspace;
use crate::lane::smoke::smoke;
use anyhow::Result;
use std::process::ExitCode;

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
