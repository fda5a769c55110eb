//! The drift engine (`cargo xtask drift`, the release's no-drift gate): builds the images, reads their OCI layouts and the
//! provider index file, and runs the pure analysis of `lane_core::drift`
//! (the curated dependency manifest against what the binaries really load).
//! See docs/drift.md.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::adapters::apt;
use crate::adapters::layout::Layout;
use crate::adapters::workspace::Workspace;
use crate::lane::build::{self, BuildOptions};
use crate::report::Reporter;
use lane_core::contents::{ContentsQuery, Providers};
use lane_core::distribution::BuiltImage;
use lane_core::drift::{
    ContentsState, CuratedManifest, DriftReport, ImageDrift, ImageFs, ProviderIndex, analyse,
    contents_query, name_providers,
};
use lane_core::python::resolve::{PythonDrift, PythonFacts};
use lane_core::spec::ImageSpec;

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

/// The provider index of the workspace (`lockfiles/library-index.toml`), or
/// an empty one when there is none.
pub fn read_index(path: &Path) -> Result<ProviderIndex> {
    match fs::read_to_string(path) {
        Ok(text) => ProviderIndex::parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProviderIndex::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Builds the images and analyses each one (see [`analyse_built`]).
pub fn drift(
    ws: &Workspace,
    names: &[String],
    index_file: Option<&Path>,
    quiet: bool,
) -> Result<DriftReport> {
    let index = provider_index(ws, index_file)?;
    let mut opts = BuildOptions::for_workspace(ws);
    opts.quiet = quiet;
    let built = build::build(ws, names, &opts)?;
    let images: Vec<&BuiltImage> = built
        .images
        .iter()
        // Bases built for the requested images are not analysed on their own.
        .filter(|b| names.is_empty() || names.contains(&b.name))
        .collect();
    let analysed = analyse_built(ws, &index, &images, &Reporter::new(quiet))?;
    Ok(DriftReport {
        images: analysed.into_iter().map(|a| a.drift).collect(),
    })
}

/// The hand-kept provider index: `--index FILE` (which must exist), else
/// lockfiles/library-index.toml when present.
pub fn provider_index(ws: &Workspace, index_file: Option<&Path>) -> Result<ProviderIndex> {
    let index_path = index_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ws.root.join("lockfiles/library-index.toml"));
    if index_file.is_some() && !index_path.is_file() {
        bail!(
            "provider index {} does not exist; pass an existing file to --index",
            index_path.display()
        );
    }
    read_index(&index_path)
}

/// One analysed image: its drift, the curated manifest (the image's dpkg
/// database) and its merged file system.
pub struct Analysed {
    pub drift: ImageDrift,
    pub manifest: CuratedManifest,
    pub fs: ImageFs,
}

/// Analyses built images: the ELF analysis, and for an image with a
/// `[python]` table the import analysis. What is missing is looked up in
/// Debian's Contents index (once for all images of one architecture),
/// unless the hand-kept index or the Python lock's candidates name it.
pub fn analyse_built(
    ws: &Workspace,
    index: &ProviderIndex,
    images: &[&BuiltImage],
    progress: &Reporter,
) -> Result<Vec<Analysed>> {
    let all = ws.load_images()?;
    let mut analysed = Vec::new();
    let mut arches = Vec::new();
    let mut python: Vec<Option<(PythonDrift, PythonFacts)>> = Vec::new();
    for b in images {
        let layout = Layout::at(&b.name, &b.layout);
        let (fs, runtime) = layout.file_system()?;
        let manifest = CuratedManifest::from_image(&fs);
        let drift = analyse(&b.name, &fs, &manifest, index, &runtime);
        let facts = match all.iter().find(|s| s.name == b.name) {
            Some(spec) => python_facts(ws, &all, spec, &runtime)?,
            None => None,
        };
        python.push(match facts {
            Some(facts) => {
                let lock = crate::adapters::pip::candidates(&ws.root)?;
                let candidates = |top: &str| lock.candidates(top);
                let py = lane_core::python::resolve::analyse(&fs, &manifest, &facts, &candidates)
                    .map_err(|e| anyhow::anyhow!("image {}: {e}", b.name))?;
                Some((py, facts))
            }
            None => None,
        });
        arches.push(layout.architecture()?);
        analysed.push(Analysed {
            drift,
            manifest,
            fs,
        });
    }
    // One scan of Debian's Contents index per architecture, for every
    // image's missing libraries and interpreters and unresolved imports.
    let mut queries: BTreeMap<String, ContentsQuery> = BTreeMap::new();
    for ((a, arch), py) in analysed.iter().zip(&arches).zip(&python) {
        let query = queries.entry(arch.clone()).or_default();
        query.extend(contents_query(&a.drift, index));
        if let Some((py, facts)) = py {
            query.extend(lane_core::python::resolve::contents_query(py, facts));
        }
    }
    let mut contents: BTreeMap<String, Option<Providers>> = BTreeMap::new();
    for (arch, query) in queries.iter().filter(|(_, q)| !q.is_empty()) {
        progress.say(format_args!(
            "drift: looking up {} in Debian's Contents index ({arch})",
            query.names().into_iter().collect::<Vec<_>>().join(", ")
        ));
        contents.insert(arch.clone(), apt::contents_providers(arch, query)?);
    }
    for ((a, arch), py) in analysed.iter_mut().zip(&arches).zip(python) {
        let found = contents.get(arch);
        if let Some(found) = found
            && !a.drift.ok
        {
            let mut with_contents = index.clone();
            match found {
                Some(found) => {
                    with_contents.contents = found.clone();
                    with_contents.contents_state = ContentsState::Consulted;
                }
                None => with_contents.contents_state = ContentsState::Absent,
            }
            name_providers(&mut a.drift, &a.manifest, &with_contents);
        }
        if let Some((mut py, facts)) = py {
            if let Some(Some(found)) = found {
                lane_core::python::resolve::name_module_providers(&mut py, found);
            }
            lane_core::python::resolve::link_extensions(
                &mut py,
                &a.fs,
                &a.manifest,
                &facts,
                &a.drift.missing_libraries,
            );
            let d = &mut a.drift;
            d.ok &= py.ok();
            // Packages whose modules are imported are used, though no ELF
            // object loads them.
            d.unused_packages.retain(|p| !py.used_packages.contains(p));
            for p in &mut d.packages {
                if py.used_packages.contains(&p.name) && p.used_by.is_empty() {
                    p.used_by.push("<python import>".into());
                }
            }
            d.python = Some(py);
        }
    }
    Ok(analysed)
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
