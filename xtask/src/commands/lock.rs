//! `cargo xtask lock [--check]`: pins the Debian packages of every image's
//! `[debian]` table (the apt work is [`crate::adapters::apt::lock`]).

use std::process::ExitCode;

use anyhow::Result;

use crate::adapters::workspace::Workspace;

/// Pin the Debian packages of every image's [debian] table.
///
/// Resolves the listed packages to their Depends + Pre-Depends closure
/// from the machine's apt index (run apt-get update first) and writes
/// lockfiles/debian.lock: name, version, architecture, archive path,
/// size, sha256 and which requested package pulled each one in. The
/// mirror is never recorded: builds fetch through the machine's apt and
/// verify every .deb against the lock. See docs/debian.md.
#[derive(clap::Args)]
pub struct Args {
    /// Write nothing; fail, naming every difference, when the lock does
    /// not match the image definitions and the apt index.
    #[arg(long)]
    pub check: bool,
    /// Print {"path", "packages", "changes", "written"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args { check, json } = args;
    let images = ws.load_images()?;
    let report = crate::adapters::apt::lock(&ws.root, &images, check)?;
    let cache = ws.root.join("target/lane-cache");
    let python = crate::adapters::pip::lock(&ws.root, &cache, &images, check)?;
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["python"] = serde_json::to_value(&python)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(p) = &python {
        for c in p.changes.iter().filter(|_| !check) {
            println!("{c}");
        }
        let state = if check {
            "is up to date"
        } else if p.written {
            "written"
        } else {
            "unchanged"
        };
        println!("{} {state} ({} wheels)", p.path, p.wheels);
    }
    if check {
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
