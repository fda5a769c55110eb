//! `cargo xtask`: the release lane's command line. Thin: parse flags, find
//! the workspace, dispatch to one module per command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use xtask::build::{self, BuildOptions};
use xtask::repro;
use xtask::workspace::Workspace;

/// The auditable container release lane.
///
/// Builds container images hermetically from images/*/image.toml into OCI
/// image layouts under target/images/, with the same digest on any machine
/// and in any directory.
#[derive(Parser)]
#[command(name = "cargo xtask", version, propagate_version = true)]
struct Cli {
    /// The workspace root (default: the nearest folder above the current one
    /// with Cargo.toml and images/).
    #[arg(long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build images into OCI image layouts under target/images/<IMAGE>/.
    ///
    /// Rust payloads are built with `cargo build --locked --release` in a
    /// cleared environment; layers are deterministic tar+gzip, cached by
    /// their inputs in target/lane-cache/. Prints each image's manifest digest.
    Build {
        /// Images to build (default: all); their workspace bases are built too.
        images: Vec<String>,
        /// Print {"images":[{name, manifest_digest, config_digest, layout, layers}]}.
        #[arg(long)]
        json: bool,
        /// Print the plan (images, layers, every entry, binaries) and build nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that the build is reproducible: build twice and compare digests.
    ///
    /// The second build runs from a copy of the source tree at another path,
    /// under umask 077, with shuffled mtimes, with empty caches. Exits non-zero
    /// and names the image, layer and first differing file on a mismatch.
    Repro {
        /// Images to check (default: all).
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pin the Debian packages of every image's [debian] table.
    ///
    /// Resolves the listed packages to their Depends + Pre-Depends closure
    /// from the machine's apt index (run apt-get update first) and writes
    /// lockfiles/debian.lock: name, version, architecture, archive path,
    /// size, sha256 and which requested package pulled each one in. The
    /// mirror is never recorded: builds fetch through the machine's apt and
    /// verify every .deb against the lock. See docs/debian.md.
    Lock {
        /// Write nothing; fail, naming every difference, when the lock does
        /// not match the image definitions and the apt index.
        #[arg(long)]
        check: bool,
        /// Print {"path", "packages", "changes", "written"}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.workspace.as_deref())?;
    match cli.command {
        Command::Build {
            images,
            json,
            dry_run,
        } => {
            let mut opts = BuildOptions::for_workspace(&ws);
            opts.quiet = json;
            if dry_run {
                let (plan, _) = build::plan(&ws, &images, &opts)?;
                println!("{}", serde_json::to_string_pretty(&plan)?);
                return Ok(ExitCode::SUCCESS);
            }
            let report = build::build(&ws, &images, &opts)?;
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
        Command::Lock { check, json } => {
            let images = ws.load_images()?;
            let report = xtask::debian::lock(&ws.root, &images, check)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if check {
                println!(
                    "{} is up to date ({} packages)",
                    report.path, report.packages
                );
            } else {
                for c in &report.changes {
                    println!("{c}");
                }
                let state = if report.written {
                    "written"
                } else {
                    "unchanged"
                };
                println!("{} {state} ({} packages)", report.path, report.packages);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Repro { images, json } => {
            let report = repro::repro(&ws, &images, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for i in &report.images {
                    let state = if i.equal { "reproducible" } else { "DIFFERS" };
                    println!("{}\t{state}\t{}", i.name, i.first);
                }
            }
            repro::check(&report)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
