//! `cargo xtask`: the release lane's command line. Thin: parse flags, find
//! the workspace, dispatch to one module per command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use xtask::build::{self, BuildOptions};
use xtask::drift::{self, DriftPolicy};
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
    /// Check each image's curated packages against what its binaries load.
    ///
    /// Builds the images, merges their layers (whiteouts applied) and, for
    /// every ELF executable and shared library, checks that the program
    /// interpreter exists and that each DT_NEEDED library resolves inside the
    /// image, transitively, as glibc's loader would: DT_RPATH (without
    /// DT_RUNPATH), LD_LIBRARY_PATH of the image config, DT_RUNPATH,
    /// /etc/ld.so.conf(.d), then /lib/<multiarch>, /usr/lib/<multiarch>,
    /// /lib, /usr/lib. The host is never consulted.
    ///
    /// The curated packages come from the image's /var/lib/dpkg/status.d/
    /// (PKG stanza + PKG.list file list); lockfiles/library-index.toml names
    /// the package that would provide a missing library. Exits non-zero when
    /// a library or interpreter is missing, and with --fail-on-unused when a
    /// curated package is needed by nothing. See docs/drift.md.
    Drift {
        /// Images to check (default: all).
        images: Vec<String>,
        /// Print the report as JSON: {"images":[{image, ok, objects,
        /// missing_libraries, missing_interpreters, malformed, packages,
        /// unused_packages}]}.
        #[arg(long)]
        json: bool,
        /// Fail when a curated package is needed by no binary.
        #[arg(long)]
        fail_on_unused: bool,
        /// A package that may be unused under --fail-on-unused (repeatable).
        #[arg(long, value_name = "PACKAGE")]
        allow_unused: Vec<String>,
        /// Provider index (default: lockfiles/library-index.toml, if present).
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
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
        Command::Drift {
            images,
            json,
            fail_on_unused,
            allow_unused,
            index,
        } => {
            let report = drift::drift(&ws, &images, index.as_deref(), json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", drift::render(&report));
            }
            let policy = DriftPolicy {
                fail_on_unused,
                allow_unused: allow_unused.into_iter().collect(),
            };
            let failures = drift::failures(&report, &policy);
            for f in &failures {
                eprintln!("error: {f}");
            }
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
