//! `cargo xtask lock [--check | --outdated]`: pins the Debian packages of
//! every image's `[debian]` table and the wheels of its `[python]` table
//! (the apt and pip work is in [`crate::adapters::apt`] and
//! [`crate::adapters::pip`]).

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::adapters::workspace::Workspace;

/// Pin the Debian packages and Python wheels of every image.
///
/// Without a flag: resolves each image's [debian] packages to their
/// Depends + Pre-Depends closure from the machine's apt index (run
/// apt-get update first) and each [python] requirement to its
/// Requires-Dist closure through the machine's pip, and writes
/// lockfiles/debian.lock and lockfiles/python.lock (name, version, archive
/// path, size, sha256, which request pulled each one in). No mirror or
/// index host is recorded: builds fetch through the machine's apt and pip
/// and verify every file against the lock. This is an update, like
/// `cargo update`: it moves every package to what the index offers now.
///
/// --check: the lock is the pin, as Cargo.lock is for `cargo build
/// --locked`. Passes when the committed locks satisfy the image
/// definitions: every requested package and requirement is locked and the
/// locked set is closed (each Depends/Pre-Depends of a locked .deb and each
/// Requires-Dist of a locked wheel is met inside the lock), judged from the
/// lock and the verified .debs and wheels, never from what an index offers
/// today. The release's pinned-inputs gate is this check.
///
/// --outdated: what the indexes offer now, as a report (never a verdict):
/// each locked package with a newer version in the machine's apt index,
/// and whether it comes from a security suite; each locked wheel with a
/// newer version in pip's index, or whose locked version the index no
/// longer lists (yanked, or removed). See docs/debian.md.
///
/// Examples:
///   cargo xtask lock --check
///   cargo xtask lock --outdated --json
#[derive(clap::Args)]
pub struct Args {
    /// Write nothing; fail, naming every problem, when the committed locks
    /// do not satisfy the image definitions.
    #[arg(long, conflicts_with = "outdated")]
    pub check: bool,
    /// Write nothing; list the locked packages the machine's apt index has
    /// newer versions of, and the locked wheels pip's index has newer
    /// versions of or no longer lists (exit 0: a report, not a check).
    #[arg(long)]
    pub outdated: bool,
    /// Print JSON: {"path", "packages", "changes", "written", "python"};
    /// with --outdated {"debian": [{"name", "locked", "available",
    /// "security", "suite"}], "python": [{"name", "locked", "available",
    /// "withdrawn", "yanked"}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args {
        check,
        outdated,
        json,
    } = args;
    let cache = ws.root.join("target/lane-cache");
    if outdated {
        let debian = crate::adapters::apt::outdated(&ws.root)?;
        let python = crate::adapters::pip::outdated(&ws.root, &ws.load_images()?)?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "debian": debian, "python": python })
                )?
            );
            return Ok(ExitCode::SUCCESS);
        }
        for o in &python {
            println!(
                "{} {} -> {}{}",
                o.name,
                o.locked,
                o.available.as_deref().unwrap_or("(none offered)"),
                match (o.withdrawn, o.yanked) {
                    (_, true) => " (the locked version is yanked)",
                    (true, false) => " (the index no longer lists the locked version)",
                    _ => "",
                }
            );
        }
        if python.is_empty() {
            println!("every locked wheel is the newest pip's index offers");
        } else {
            println!(
                "{} locked wheel(s) have newer versions or were withdrawn; cargo xtask lock moves them",
                python.len()
            );
        }
        if debian.is_empty() {
            println!("every locked Debian package is the newest the machine's apt index offers");
        } else {
            for o in &debian {
                println!(
                    "{} {} -> {} ({}{})",
                    o.name,
                    o.locked,
                    o.available,
                    o.suite,
                    if o.security { ", security update" } else { "" }
                );
            }
            println!(
                "{} locked package(s) have newer versions; cargo xtask lock moves them",
                debian.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let images = ws.load_images()?;
    let (report, python) = if check {
        (
            crate::adapters::apt::check(&ws.root, &images, &cache)?,
            crate::adapters::pip::check(&ws.root, &cache, &images)?,
        )
    } else {
        let report = crate::adapters::apt::lock(&ws.root, &images)?;
        (
            report,
            crate::adapters::pip::lock(&ws.root, &cache, &images)?,
        )
    };
    if check {
        let mut problems = report.changes.clone();
        problems.extend(python.iter().flat_map(|p| p.changes.clone()));
        if !problems.is_empty() {
            bail!(
                "the committed locks do not satisfy the image definitions:\n  {}\nrun cargo xtask lock and commit the result",
                problems.join("\n  ")
            );
        }
    }
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["python"] = serde_json::to_value(&python)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let state = |written: bool| {
        if check {
            "satisfies the image definitions"
        } else if written {
            "written"
        } else {
            "unchanged"
        }
    };
    if let Some(p) = &python {
        for c in p.changes.iter().filter(|_| !check) {
            println!("{c}");
        }
        println!("{} {} ({} wheels)", p.path, state(p.written), p.wheels);
    }
    for c in report.changes.iter().filter(|_| !check) {
        println!("{c}");
    }
    println!(
        "{} {} ({} packages)",
        report.path,
        state(report.written),
        report.packages
    );
    Ok(ExitCode::SUCCESS)
}
