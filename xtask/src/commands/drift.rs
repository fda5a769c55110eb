//! `cargo xtask drift`: builds the images, reads their OCI layouts and the
//! provider index file, and runs the pure analysis of `lane_core::drift`
//! (the curated dependency manifest against what the binaries really load).
//! See docs/drift.md.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::adapters::layout::Layout;
use crate::adapters::workspace::Workspace;
use crate::commands::build::{self, BuildOptions};
use lane_core::drift::{CuratedManifest, DriftReport, ProviderIndex, analyse};

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
        for m in &i.malformed {
            let _ = writeln!(out, "  malformed ELF: {}: {}", m.path, m.error);
        }
        for p in &i.unused_packages {
            let _ = writeln!(out, "  unused package: {p}");
        }
    }
    out
}

/// The provider index of the workspace (`lockfiles/library-index.toml`), or
/// an empty one when there is none.
pub fn read_index(path: &Path) -> Result<ProviderIndex> {
    match fs::read_to_string(path) {
        Ok(text) => ProviderIndex::parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProviderIndex::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Builds the images and analyses each one.
pub fn drift(
    ws: &Workspace,
    names: &[String],
    index_file: Option<&Path>,
    quiet: bool,
) -> Result<DriftReport> {
    let index_path = index_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ws.root.join("lockfiles/library-index.toml"));
    if index_file.is_some() && !index_path.is_file() {
        bail!(
            "provider index {} does not exist; pass an existing file to --index",
            index_path.display()
        );
    }
    let index = read_index(&index_path)?;
    let mut opts = BuildOptions::for_workspace(ws);
    opts.quiet = quiet;
    let built = build::build(ws, names, &opts)?;
    let mut images = Vec::new();
    for b in &built.images {
        if !names.is_empty() && !names.contains(&b.name) {
            continue; // a base built for the requested image
        }
        let (image_fs, runtime) = Layout::at(&b.name, &b.layout).file_system()?;
        let manifest = CuratedManifest::from_image(&image_fs);
        images.push(analyse(&b.name, &image_fs, &manifest, &index, &runtime));
    }
    Ok(DriftReport { images })
}
