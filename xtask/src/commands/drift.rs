//! `cargo xtask drift`: its flags and its output, over `lane::drift`.

use crate::adapters::workspace::Workspace;
use crate::lane::drift::drift;
use anyhow::Result;
use lane_core::drift::DriftPolicy;
use lane_core::drift::{ContentsState, DriftReport};
use std::path::PathBuf;
use std::process::ExitCode;

/// The human-readable report: one block per image.
pub fn render(report: &DriftReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for i in &report.images {
        let state = if i.ok { "ok" } else { "DRIFT" };
        let _ = writeln!(
            out,
            "{}\t{state}\t{} ELF objects, {} missing libraries, {} missing interpreters, {} malformed, {} unused packages",
            i.image,
            i.objects.len(),
            i.missing_libraries.len(),
            i.missing_interpreters.len(),
            i.malformed.len(),
            i.unused_packages.len()
        );
        for o in &i.objects {
            if o.needed.is_empty() && o.interpreter.is_none() {
                continue;
            }
            let pkgs = if o.depends_on.is_empty() {
                "-".to_string()
            } else {
                o.depends_on.join(", ")
            };
            let _ = writeln!(out, "  {} ({}): packages {pkgs}", o.path, o.kind);
        }
        for m in &i.missing_interpreters {
            let _ = writeln!(
                out,
                "  missing interpreter: {} needs {}",
                m.binary, m.interpreter
            );
        }
        for m in &i.missing_libraries {
            let pkg = if m.providers.is_empty() {
                "unknown package".to_string()
            } else {
                format!("package {}", m.providers.join(" or "))
            };
            let _ = writeln!(
                out,
                "  missing library: {} needs {} (needed by {}, {}; {pkg})",
                m.binary, m.library, m.needed_by, m.reason
            );
        }
        if i.contents_index == ContentsState::Absent {
            let _ = writeln!(
                out,
                "  (Debian's Contents index is not on this machine: `apt-get install apt-file && apt-get update` lets drift name the packages)"
            );
        }
        for m in &i.malformed {
            let _ = writeln!(out, "  malformed ELF: {}: {}", m.path, m.error);
        }
        for p in &i.unused_packages {
            let _ = writeln!(out, "  unused package: {p}");
        }
        if let Some(py) = &i.python {
            let _ = writeln!(
                out,
                "  python {}: {} files, {} imports, {} unresolved, {} missing Requires-Dist, {} extension problems",
                py.python,
                py.files.len(),
                py.imports.len(),
                py.unresolved.len(),
                py.missing_requirements.len(),
                py.extension_problems.len()
            );
            for u in &py.unresolved {
                let _ = writeln!(
                    out,
                    "  unresolved import: {}:{}: {}",
                    u.site.file, u.site.line, u.site.code
                );
            }
            for (what, list) in [
                ("optional import", &py.optional),
                ("TYPE_CHECKING import", &py.type_checking),
                (
                    "dynamic import (not checkable, smoke-import covers it)",
                    &py.dynamic,
                ),
            ] {
                for u in list {
                    let _ = writeln!(
                        out,
                        "  {what}: {}:{}: {} ({})",
                        u.site.file, u.site.line, u.site.code, u.status
                    );
                }
            }
            for d in &py.distributions {
                let _ = writeln!(
                    out,
                    "  distribution {} {} ({}): modules {}; used by {}",
                    d.name,
                    d.version.as_deref().unwrap_or("-"),
                    d.kind,
                    d.modules.join(", "),
                    if d.used_by.is_empty() {
                        "nothing".to_string()
                    } else {
                        d.used_by.join(", ")
                    }
                );
            }
            for u in &py.unused {
                let _ = writeln!(out, "  unused distribution: {u}");
            }
        }
    }
    out
}

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
/// (PKG stanza + PKG.list file list); Debian's Contents index (apt-file's
/// data, through apt; lockfiles/library-index.toml overrides it) names
/// the package that would provide a missing library. Exits non-zero when
/// a library or interpreter is missing, and with --fail-on-unused when a
/// curated package is needed by nothing. See docs/drift.md.
#[derive(clap::Args)]
pub struct Args {
    /// Images to check (default: all).
    pub images: Vec<String>,
    /// Print the report as JSON: {"images":[{image, ok, objects,
    /// missing_libraries, missing_interpreters, malformed, packages,
    /// unused_packages}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub unused: UnusedArgs,
    /// Provider index (default: lockfiles/library-index.toml, if present).
    #[arg(long, value_name = "FILE")]
    pub index: Option<PathBuf>,
}

/// The unused-package policy of `drift` (`DriftPolicy`).
#[derive(clap::Args)]
pub struct UnusedArgs {
    /// Fail when a curated package is needed by no binary.
    #[arg(long)]
    pub fail_on_unused: bool,
    /// A package that may be unused under --fail-on-unused (repeatable).
    #[arg(long, value_name = "PACKAGE")]
    pub allow_unused: Vec<String>,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args {
        images,
        json,
        unused,
        index,
    } = args;
    let report = drift(ws, &images, index.as_deref(), json)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let policy = DriftPolicy {
        fail_on_unused: unused.fail_on_unused,
        allow_unused: unused.allow_unused.into_iter().collect(),
    };
    let failures = lane_core::drift::failures(&report, &policy);
    for f in &failures {
        eprintln!("error: {f}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
