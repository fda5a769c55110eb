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
use lane_core::drift::{CuratedManifest, DriftReport, ImageDrift, ImageFs, ProviderIndex, analyse};
use lane_core::python::resolve::PythonFacts;
use lane_core::spec::ImageSpec;

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

/// The Python facts of an image with a `[python]` table.
pub fn python_facts(
    ws: &Workspace,
    all: &[ImageSpec],
    spec: &ImageSpec,
    runtime: &lane_core::drift::RuntimeFacts,
) -> Result<Option<PythonFacts>> {
    let Some(py) = &spec.python else {
        return Ok(None);
    };
    let t = crate::adapters::pip::target(&ws.root, all, spec)?;
    Ok(Some(PythonFacts {
        interpreter: t.interpreter,
        version: t.version,
        full_version: t.full_version,
        machine: t.machine,
        app_dir: py.app_dir.to_string(),
        app_source: match &py.app {
            Some(a) => format!("{}/{a}", spec.dir),
            None => py.app_dir.to_string(),
        },
        pythonpath: runtime.python_path.clone(),
        modules: py.modules.clone(),
    }))
}

/// The drift of one built image: the ELF analysis, and for an image with a
/// `[python]` table the import analysis, each missing module or library
/// named with the package that would provide it (the lock's candidates,
/// the curated manifest, Debian's Contents index). Returns the merged file
/// system and manifest too (the release gates read them).
pub fn analyse_layout(
    ws: &Workspace,
    all: &[ImageSpec],
    index: &ProviderIndex,
    name: &str,
    layout: &Path,
) -> Result<(ImageDrift, ImageFs, CuratedManifest)> {
    let (image_fs, runtime) = Layout::at(name, layout).file_system()?;
    let manifest = CuratedManifest::from_image(&image_fs);
    let mut d = analyse(name, &image_fs, &manifest, index, &runtime);
    let spec = all.iter().find(|s| s.name == name);
    let facts = match spec {
        Some(spec) => python_facts(ws, all, spec, &runtime)?,
        None => None,
    };
    let mut py = match &facts {
        Some(facts) => {
            let lock = crate::adapters::pip::candidates(&ws.root)?;
            let candidates = |top: &str| lock.candidates(top);
            Some(
                lane_core::python::resolve::analyse(&image_fs, &manifest, facts, &candidates)
                    .map_err(|e| anyhow::anyhow!("image {name}: {e}"))?,
            )
        }
        None => None,
    };
    // Debian's Contents index names providers nothing else knows.
    let modules: std::collections::BTreeSet<String> = py
        .iter()
        .flat_map(|p| &p.unresolved)
        .filter(|u| u.site.problem.is_none())
        .map(|u| u.site.top_level().to_string())
        .collect();
    let libraries: std::collections::BTreeSet<String> = d
        .missing_libraries
        .iter()
        .filter(|m| m.providers.is_empty())
        .map(|m| m.library.clone())
        .collect();
    if !modules.is_empty() || !libraries.is_empty() {
        let (mods, libs) = crate::adapters::apt::contents_providers(&modules, &libraries)?;
        for m in &mut d.missing_libraries {
            if let Some(p) = libs.get(&m.library) {
                m.providers.extend(p.iter().cloned());
                m.providers.sort();
                m.providers.dedup();
            }
        }
        if let Some(py) = &mut py {
            for (top, pkgs) in mods {
                let list: Vec<String> = pkgs.into_iter().map(|p| format!("deb:{p}")).collect();
                py.add_providers(&top, &list);
            }
        }
    }
    if let (Some(py), Some(facts)) = (&mut py, &facts) {
        lane_core::python::resolve::link_extensions(
            py,
            &image_fs,
            &manifest,
            facts,
            &d.missing_libraries,
        );
        d.ok &= py.ok();
        // Packages whose modules are imported are used, though no ELF
        // object loads them.
        d.unused_packages.retain(|p| !py.used_packages.contains(p));
        for p in &mut d.packages {
            if py.used_packages.contains(&p.name) && p.used_by.is_empty() {
                p.used_by.push("<python import>".into());
            }
        }
    }
    d.python = py;
    Ok((d, image_fs, manifest))
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
    let all = ws.load_images()?;
    let mut images = Vec::new();
    for b in &built.images {
        if !names.is_empty() && !names.contains(&b.name) {
            continue; // a base built for the requested image
        }
        images.push(analyse_layout(ws, &all, &index, &b.name, &b.layout)?.0);
    }
    Ok(DriftReport { images })
}

/// The smoke commands of an image: its `[[smoke]]` entries and, for an
/// image with a `[python]` table, the smoke-import of every top-level
/// module the import analysis found (see `lane_core::python::smoke`).
pub fn smoke_checks(
    ws: &Workspace,
    spec: &ImageSpec,
    layout: &Path,
) -> Result<Vec<lane_core::spec::SmokeSpec>> {
    let mut checks = spec.smoke.clone();
    if spec.python.is_none() {
        return Ok(checks);
    }
    let all = ws.load_images()?;
    let (image_fs, runtime) = Layout::at(&spec.name, layout).file_system()?;
    let manifest = CuratedManifest::from_image(&image_fs);
    let Some(facts) = python_facts(ws, &all, spec, &runtime)? else {
        return Ok(checks);
    };
    let py = lane_core::python::resolve::analyse(&image_fs, &manifest, &facts, &|_| Vec::new())
        .map_err(|e| anyhow::anyhow!("image {}: {e}", spec.name))?;
    checks.push(lane_core::python::smoke::check(
        &facts.interpreter,
        &py.smoke_modules,
    ));
    Ok(checks)
}
