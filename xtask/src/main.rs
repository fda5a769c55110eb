//! `cargo xtask`: the release lane's command line. Thin: parse flags, find
//! the workspace, dispatch to the command (one module per command, each
//! with its flags, its help and its output).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use xtask::adapters::workspace::Workspace;
use xtask::commands::{
    audit, bench, build, drift, keygen, lock, promote, publish, release, repro, smoke, verify,
};

/// The auditable container release lane.
///
/// Builds container images hermetically from images/*/image.toml into OCI
/// image layouts under target/images/, with the same digest on any machine
/// and in any directory.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    propagate_version = true
)]
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
    Build(build::Args),
    Release(release::Args),
    Keygen(keygen::Args),
    Verify(verify::Args),
    Promote(promote::Args),
    Audit(audit::Args),
    Bench(bench::Args),
    BenchLayer(bench::LayerArgs),
    BenchImports(bench::ImportsArgs),
    Repro(repro::Args),
    Publish(publish::Args),
    Smoke(smoke::Args),
    Drift(drift::Args),
    Lock(lock::Args),
}

fn main() -> ExitCode {
    // First, while this process has one thread: no subprocess inherits a
    // secret.
    xtask::adapters::secrets::take_from_environment();
    let cli = Cli::parse();
    xtask::adapters::signals::install();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Work still running in the background when the run stopped early (a
    // release's lock check or second build after a failed build) may have
    // named temporaries: none of them is left behind.
    xtask::adapters::cache::remove_own_temporaries();
    code
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::BenchLayer(args) = cli.command {
        return bench::run_layer(args);
    }
    let ws = Workspace::locate(cli.workspace.as_deref())?;
    match cli.command {
        Command::Build(args) => build::run(&ws, args),
        Command::Release(args) => release::run(&ws, args),
        Command::Keygen(args) => keygen::run(&ws, args),
        Command::Verify(args) => verify::run(&ws, args),
        Command::Promote(args) => promote::run(&ws, args),
        Command::Audit(args) => audit::run(&ws, args),
        Command::Bench(args) => bench::run(&ws, args),
        Command::BenchLayer(args) => bench::run_layer(args),
        Command::BenchImports(args) => bench::run_imports(&ws, args),
        Command::Repro(args) => repro::run(&ws, args),
        Command::Publish(args) => publish::run(&ws, args),
        Command::Smoke(args) => smoke::run(&ws, args),
        Command::Drift(args) => drift::run(&ws, args),
        Command::Lock(args) => lock::run(&ws, args),
    }
}
