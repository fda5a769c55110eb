//! Python import drift: every import of the application resolved the way
//! the image's interpreter would, inside the merged image file system only,
//! and every resolved module mapped to what provides it (a wheel, a Debian
//! package, the application itself or the standard library).
//!
//! Inputs are values: the [`ImageFs`] (with the application's sources and
//! the distributions' metadata kept), the curated Debian manifest, the
//! image's [`PythonFacts`] and the lock's candidates. Output: [`PythonDrift`].

use std::collections::{BTreeMap, BTreeSet};

use object::Endianness;
use object::elf;
use object::read::elf::{FileHeader, Sym};
use serde::{Deserialize, Serialize};

use super::imports::{self, ImportKind, ImportSite, SourceError};
pub use super::report::{
    Distribution, ExtensionProblem, MissingRequirement, Provider, PythonDrift, ResolvedImport,
};
use super::requirements::{MarkerEnv, Requirement};
use super::version::Version;
use super::{normalize, wheel};
use crate::contents::{ContentsQuery, Providers};
use crate::drift::{CuratedManifest, ImageFs, MissingLibrary, Node};

/// What the lane knows about an image's Python.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonFacts {
    /// `/usr/bin/python3.11`
    pub interpreter: String,
    /// `3.11`
    pub version: String,
    /// `3.11.2`, for markers.
    pub full_version: String,
    /// `x86_64`
    pub machine: String,
    /// Where the application's sources are in the image (`/app`).
    pub app_dir: String,
    /// The workspace folder they come from (`images/pyhello/app`), to name
    /// files in the report.
    pub app_source: String,
    /// `PYTHONPATH` of the image config.
    pub pythonpath: Vec<String>,
    /// Extra modules to smoke-import (image.toml `modules`).
    pub modules: Vec<String>,
}

impl PythonFacts {
    /// sys.path of the image's interpreter, in order (Debian's layout).
    pub fn sys_path(&self) -> Vec<String> {
        let v = &self.version;
        let compact = v.replace('.', "");
        let mut out = vec![self.app_dir.clone()];
        out.extend(self.pythonpath.iter().cloned());
        out.extend([
            format!("/usr/lib/python{compact}.zip"),
            format!("/usr/lib/python{v}"),
            format!("/usr/lib/python{v}/lib-dynload"),
            format!("/usr/local/lib/python{v}/dist-packages"),
            "/usr/lib/python3/dist-packages".to_string(),
        ]);
        let mut seen = BTreeSet::new();
        out.retain(|d| seen.insert(d.clone()));
        out
    }

    /// Extension module suffixes (`importlib.machinery.EXTENSION_SUFFIXES`).
    pub fn extension_suffixes(&self) -> Vec<String> {
        let compact = self.version.replace('.', "");
        vec![
            format!(".cpython-{compact}-{}-linux-gnu.so", self.machine),
            ".abi3.so".to_string(),
            ".so".to_string(),
        ]
    }

    fn stdlib(&self) -> String {
        format!("/usr/lib/python{}", self.version)
    }
}

/// Modules the interpreter has built in (`sys.builtin_module_names`):
/// the `PyInit_*` symbols the interpreter exports, plus the core modules
/// that are always built in and the ones always in `sys.modules`
/// (`__main__`, the frozen bootstrap).
pub fn builtin_modules(interpreter_elf: &[u8]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = [
        "__main__",
        "_frozen_importlib",
        "_frozen_importlib_external",
        "sys",
        "builtins",
        "marshal",
        "_imp",
        "_warnings",
        "_io",
        "_thread",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Ok(header) = elf::FileHeader64::<Endianness>::parse(interpreter_elf) else {
        return out;
    };
    let Ok(endian) = header.endian() else {
        return out;
    };
    let Ok(sections) = header.sections(endian, interpreter_elf) else {
        return out;
    };
    let Ok(symbols) = sections.symbols(endian, interpreter_elf, elf::SHT_DYNSYM) else {
        return out;
    };
    for s in symbols.iter() {
        if let Ok(name) = s.name(endian, symbols.strings())
            && let Some(m) = name.strip_prefix(b"PyInit_")
            && s.st_shndx(endian) != elf::SHN_UNDEF
        {
            out.insert(String::from_utf8_lossy(m).into_owned());
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Found {
    Builtin,
    /// A module file (source, bytecode or extension).
    Module(String),
    /// A regular package directory.
    Package(String),
    /// Namespace package portions.
    Namespace(Vec<String>),
}

struct Resolver<'a> {
    fs: &'a ImageFs,
    sys_path: Vec<String>,
    suffixes: Vec<String>,
    builtins: BTreeSet<String>,
    /// Dotted name -> result: many files import the same modules.
    memo: std::cell::RefCell<BTreeMap<String, Result<Option<String>, String>>>,
}

impl Resolver<'_> {
    fn is_dir(&self, p: &str) -> bool {
        self.fs
            .resolve(p)
            .and_then(|r| self.fs.get(&r).cloned())
            .is_some_and(|n| n == Node::Dir)
    }

    /// Looks `name` up in `dirs` the way PathFinder does.
    fn find_in(&self, dirs: &[String], name: &str) -> Option<Found> {
        let mut portions = Vec::new();
        for d in dirs {
            let base = format!("{}/{name}", d.trim_end_matches('/'));
            if self.is_dir(&base) {
                for init in ["__init__.py", "__init__.pyc"] {
                    if self.fs.is_file(&format!("{base}/{init}")) {
                        return Some(Found::Package(base));
                    }
                }
                for s in &self.suffixes {
                    if self.fs.is_file(&format!("{base}/__init__{s}")) {
                        return Some(Found::Package(base));
                    }
                }
            }
            for s in &self.suffixes {
                let f = format!("{base}{s}");
                if self.fs.is_file(&f) {
                    return Some(Found::Module(f));
                }
            }
            for ext in [".py", ".pyc"] {
                let f = format!("{base}{ext}");
                if self.fs.is_file(&f) {
                    return Some(Found::Module(f));
                }
            }
            if self.is_dir(&base) {
                portions.push(base);
            }
        }
        (!portions.is_empty()).then_some(Found::Namespace(portions))
    }

    /// Resolves a dotted name: `Ok(path)` or `Err(the prefix not found)`.
    fn resolve(&self, dotted: &str) -> Result<Option<String>, String> {
        if let Some(r) = self.memo.borrow().get(dotted) {
            return r.clone();
        }
        let r = self.resolve_uncached(dotted);
        self.memo.borrow_mut().insert(dotted.to_string(), r.clone());
        r
    }

    fn resolve_uncached(&self, dotted: &str) -> Result<Option<String>, String> {
        let mut parts = dotted.split('.');
        let top = parts.next().unwrap_or("");
        let mut found = if self.builtins.contains(top) {
            Found::Builtin
        } else {
            self.find_in(&self.sys_path, top)
                .ok_or_else(|| top.to_string())?
        };
        let mut so_far = top.to_string();
        for p in parts {
            so_far = format!("{so_far}.{p}");
            let dirs = match &found {
                Found::Package(d) => vec![d.clone()],
                Found::Namespace(ds) => ds.clone(),
                // An attribute of a module (os.path): not checkable here.
                Found::Module(_) | Found::Builtin => break,
            };
            found = self.find_in(&dirs, p).ok_or_else(|| so_far.clone())?;
        }
        Ok(match found {
            Found::Builtin => None,
            Found::Module(p) => Some(p),
            Found::Package(d) => Some(d),
            Found::Namespace(ds) => ds.into_iter().next(),
        })
    }
}

/// An installed distribution's metadata.
struct Installed {
    name: String,
    version: String,
    kind: &'static str,
    metadata_path: String,
    requires: Vec<String>,
    files: Vec<String>,
}

fn installed_wheels(fs: &ImageFs, site_dirs: &[String]) -> Vec<Installed> {
    let mut out = Vec::new();
    for site in site_dirs {
        for entry in fs.list(site) {
            let Some(_) = entry.strip_suffix(".dist-info") else {
                continue;
            };
            let dir = format!("{site}/{entry}");
            let Some(meta) = fs.read_text(&format!("{dir}/METADATA")) else {
                continue;
            };
            let Ok(m) = wheel::parse_metadata(&meta) else {
                continue;
            };
            let files: Vec<String> = fs
                .read_text(&format!("{dir}/RECORD"))
                .map(|r| {
                    r.lines()
                        .filter_map(|l| l.rsplitn(3, ',').nth(2))
                        .map(|p| normalise_join(site, p.trim_matches('"')))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Installed {
                name: m.name,
                version: m.version,
                kind: "wheel",
                metadata_path: format!("{dir}/METADATA"),
                requires: m.requires_dist,
                files,
            });
        }
    }
    out
}

fn normalise_join(dir: &str, rel: &str) -> String {
    crate::drift::normalise(&format!("{dir}/{rel}"))
}

/// Every Python source file of the application, from the image.
pub fn app_sources(fs: &ImageFs, facts: &PythonFacts) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![facts.app_dir.clone()];
    while let Some(dir) = todo.pop() {
        for name in fs.list(&dir) {
            let p = format!("{}/{name}", dir.trim_end_matches('/'));
            match fs.get(&p) {
                Some(Node::Dir) if name != "__pycache__" => todo.push(p),
                Some(Node::File { .. }) if name.ends_with(".py") => {
                    let rel = p[facts.app_dir.trim_end_matches('/').len() + 1..].to_string();
                    out.push((rel, p));
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Parses every source of the application and checks its imports.
/// `candidates` maps a top-level module to distributions the lock knows
/// provide it. A source that does not parse is an error (path and line).
pub fn analyse(
    fs: &ImageFs,
    manifest: &CuratedManifest,
    facts: &PythonFacts,
    candidates: &dyn Fn(&str) -> Vec<String>,
) -> Result<PythonDrift, SourceError> {
    let sys_path = facts.sys_path();
    let builtins = builtin_modules(fs.read(&facts.interpreter).unwrap_or_default());
    let r = Resolver {
        fs,
        sys_path: sys_path.clone(),
        suffixes: facts.extension_suffixes(),
        builtins,
        memo: Default::default(),
    };
    let site_dirs = vec![
        format!("/usr/local/lib/python{}/dist-packages", facts.version),
        "/usr/lib/python3/dist-packages".to_string(),
    ];
    let wheels = installed_wheels(fs, &site_dirs);
    // Path -> provider: wheels (RECORD) first, then Debian packages.
    let mut owner: BTreeMap<String, Provider> = BTreeMap::new();
    let debian_dist_info: BTreeSet<String> = manifest
        .packages
        .iter()
        .flat_map(|p| &p.files)
        .filter(|f| f.contains(".dist-info/") && f.ends_with("/METADATA"))
        .cloned()
        .collect();
    for w in &wheels {
        if debian_dist_info.contains(&w.metadata_path) {
            continue;
        }
        for f in &w.files {
            owner.entry(f.clone()).or_insert(Provider {
                kind: "wheel".into(),
                name: w.name.clone(),
            });
        }
    }
    for p in &manifest.packages {
        for f in &p.files {
            let prov = Provider {
                kind: "debian".into(),
                name: p.name.clone(),
            };
            owner.entry(f.clone()).or_insert(prov);
        }
    }
    for p in &manifest.packages {
        for f in &p.files {
            if let Some(real) = fs.resolve(f) {
                owner.entry(real).or_insert(Provider {
                    kind: "debian".into(),
                    name: p.name.clone(),
                });
            }
        }
    }
    // A .dist-info a Debian package ships (PyYAML's in python3-yaml) is
    // that package's, not a wheel the lane installed.
    let mut wheels = wheels;
    for w in &mut wheels {
        if debian_dist_info.contains(&w.metadata_path) {
            w.kind = "debian";
        }
    }
    let app = facts.app_dir.trim_end_matches('/').to_string();
    let stdlib = facts.stdlib();
    let provider_memo: std::cell::RefCell<BTreeMap<String, Provider>> = Default::default();
    let provider_uncached = |path: &str| -> Provider {
        let real = fs.resolve(path).unwrap_or_else(|| path.to_string());
        let in_dir = |d: &str| real == d || real.starts_with(&format!("{d}/"));
        if in_dir(&app) {
            return Provider {
                kind: "application".into(),
                name: facts.app_source.clone(),
            };
        }
        // A package directory belongs to whoever owns its __init__.
        let probe = [
            real.clone(),
            format!("{real}/__init__.py"),
            path.to_string(),
        ];
        let owned = probe.iter().find_map(|p| owner.get(p).cloned());
        if in_dir(&stdlib) {
            return Provider {
                kind: "stdlib".into(),
                name: owned
                    .map(|o| o.name)
                    .unwrap_or_else(|| format!("python{}", facts.version)),
            };
        }
        owned.unwrap_or(Provider {
            kind: "unowned".into(),
            name: real,
        })
    };
    let provider_of = |path: &str| -> Provider {
        if let Some(p) = provider_memo.borrow().get(path) {
            return p.clone();
        }
        let p = provider_uncached(path);
        provider_memo
            .borrow_mut()
            .insert(path.to_string(), p.clone());
        p
    };

    let mut drift = PythonDrift {
        interpreter: facts.interpreter.clone(),
        python: facts.full_version.clone(),
        sys_path,
        ..PythonDrift::default()
    };
    // Parse every file, in parallel: the result is in file order whatever
    // the number of threads, and the first error (in file order) wins.
    let mut jobs: Vec<(String, String, bool, &str)> = Vec::new();
    for (rel, image_path) in app_sources(fs, facts) {
        let shown = format!("{}/{rel}", facts.app_source);
        drift.files.push(shown.clone());
        let Some((module, is_package)) = imports::module_of(&rel) else {
            continue;
        };
        let text = fs.read(&image_path).unwrap_or_default();
        let text = std::str::from_utf8(text).map_err(|_| SourceError {
            file: shown.clone(),
            line: 1,
            column: 1,
            message: "not UTF-8; Python sources must be UTF-8".into(),
        })?;
        jobs.push((shown, module, is_package, text));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = jobs.len().div_ceil(threads).max(1);
    let parsed: Vec<Result<Vec<ImportSite>, SourceError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(shown, module, is_package, text)| {
                            imports::collect(shown, module, *is_package, text)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(SourceError {
                        file: facts.app_source.clone(),
                        line: 1,
                        column: 1,
                        message: "the Python parser failed on a file of this folder".into(),
                    })]
                })
            })
            .collect()
    });
    let mut sites = Vec::new();
    for p in parsed {
        sites.extend(p?);
    }
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut smoke: BTreeSet<String> = BTreeSet::new();
    for site in sites {
        let mut ri = ResolvedImport {
            site,
            status: "resolved".into(),
            path: None,
            provider: None,
            missing: None,
            providers: Vec::new(),
        };
        let kind = ri.site.kind;
        if kind == ImportKind::DynamicNonLiteral {
            ri.status = "not_checked".into();
            drift.dynamic.push(ri.clone());
            drift.imports.push(ri);
            continue;
        }
        let result = if ri.site.problem.is_some() {
            Err(String::new())
        } else {
            r.resolve(&ri.site.module)
        };
        match result {
            Ok(path) => {
                let prov = match &path {
                    None => Provider {
                        kind: "builtin".into(),
                        name: format!("python{}", facts.version),
                    },
                    Some(p) => provider_of(p),
                };
                used.entry(prov.name.clone())
                    .or_default()
                    .insert(ri.site.file.clone());
                ri.path = path;
                ri.provider = Some(prov);
                if kind != ImportKind::TypeChecking {
                    smoke.insert(ri.site.top_level().to_string());
                }
            }
            Err(missing) => {
                ri.status = "unresolved".into();
                if !missing.is_empty() {
                    ri.missing = Some(missing);
                }
                if ri.site.problem.is_none() {
                    ri.providers = candidates(ri.site.top_level());
                    if matches!(kind, ImportKind::Import | ImportKind::Dynamic) {
                        smoke.insert(ri.site.top_level().to_string());
                    }
                }
            }
        }
        match kind {
            ImportKind::Optional => drift.optional.push(ri.clone()),
            ImportKind::TypeChecking => drift.type_checking.push(ri.clone()),
            _ if ri.status == "unresolved" => drift.unresolved.push(ri.clone()),
            _ => {}
        }
        drift.imports.push(ri);
    }

    // Installed distributions: wheels and the Debian packages with modules
    // in dist-packages.
    let env = MarkerEnv::cpython_linux(&facts.full_version, &facts.machine);
    let by_name: BTreeMap<String, &Installed> =
        wheels.iter().map(|w| (normalize(&w.name), w)).collect();
    let deb_site = "/usr/lib/python3/dist-packages/";
    let mut dists = Vec::new();
    for w in wheels.iter().filter(|w| w.kind == "wheel") {
        let rels: Vec<String> = w
            .files
            .iter()
            .filter_map(|f| {
                site_dirs
                    .iter()
                    .find_map(|s| f.strip_prefix(&format!("{s}/")))
                    .map(str::to_string)
            })
            .collect();
        dists.push((
            w.name.clone(),
            Some(w.version.clone()),
            w.kind,
            wheel::top_level_modules(rels.iter().map(String::as_str)),
            w.requires.clone(),
        ));
        for req in &w.requires {
            let Ok(req) = Requirement::parse(req) else {
                continue;
            };
            if !req.applies(&env, &BTreeSet::new()) {
                continue;
            }
            match by_name.get(&req.key()) {
                None => drift.missing_requirements.push(MissingRequirement {
                    distribution: w.name.clone(),
                    version: w.version.clone(),
                    requirement: req.text.clone(),
                    requires: req.name.clone(),
                    reason: "which is not installed".into(),
                }),
                Some(d) => {
                    if let Ok(v) = Version::parse(&d.version)
                        && !req.allows(&v)
                    {
                        drift.missing_requirements.push(MissingRequirement {
                            distribution: w.name.clone(),
                            version: w.version.clone(),
                            requirement: req.text.clone(),
                            requires: req.name.clone(),
                            reason: format!("but {} {} is installed", d.name, d.version),
                        });
                    } else {
                        used.entry(d.name.clone())
                            .or_default()
                            .insert(format!("requires-dist:{}", w.name));
                    }
                }
            }
        }
    }
    for (name, users) in &used {
        if manifest.packages.iter().any(|p| &p.name == name) && !users.is_empty() {
            drift.used_packages.push(name.clone());
        }
    }
    for p in &manifest.packages {
        let rels: Vec<&str> = p
            .files
            .iter()
            .filter_map(|f| f.strip_prefix(deb_site))
            .collect();
        if rels.is_empty() {
            continue;
        }
        dists.push((
            p.name.clone(),
            p.version.clone(),
            "debian",
            wheel::top_level_modules(rels),
            Vec::new(),
        ));
    }
    for (name, version, kind, modules, requires) in dists {
        let used_by: Vec<String> = used
            .get(&name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if used_by.is_empty() {
            drift.unused.push(name.clone());
        }
        smoke.extend(modules.iter().filter(|m| !m.starts_with('_')).cloned());
        drift.distributions.push(Distribution {
            name,
            version,
            kind: kind.to_string(),
            modules,
            requires_dist: requires,
            used_by,
        });
    }
    smoke.extend(facts.modules.iter().cloned());
    smoke.remove("");
    drift.smoke_modules = smoke.into_iter().collect();
    Ok(drift)
}

/// The name under which [`contents_query`] asks for a top-level module
/// (`python:yaml`), apart from the library names the ELF analysis asks for.
const CONTENTS_MODULE: &str = "python:";

/// The paths to look up in Debian's Contents index for the unresolved
/// imports: every file that would make the image's interpreter find the
/// top-level module in a directory of its sys.path (`DIR/NAME/__init__.py`,
/// `DIR/NAME.py`, `DIR/NAME<extension suffix>`), the application's own
/// directory and the zipped standard library left out.
pub fn contents_query(py: &PythonDrift, facts: &PythonFacts) -> ContentsQuery {
    let mut q = ContentsQuery::new();
    let suffixes = facts.extension_suffixes();
    let dirs: Vec<String> = facts
        .sys_path()
        .into_iter()
        .filter(|d| *d != facts.app_dir && !d.ends_with(".zip"))
        .collect();
    for u in py.unresolved.iter().filter(|u| u.site.problem.is_none()) {
        let top = u.site.top_level();
        if top.is_empty() {
            continue;
        }
        let key = format!("{CONTENTS_MODULE}{top}");
        for dir in &dirs {
            q.want(&key, &format!("{dir}/{top}/__init__.py"));
            q.want(&key, &format!("{dir}/{top}.py"));
            for s in &suffixes {
                q.want(&key, &format!("{dir}/{top}{s}"));
            }
        }
    }
    q
}

/// Names, from the answer to [`contents_query`], the Debian packages
/// (`deb:PACKAGE`) that ship each unresolved module.
pub fn name_module_providers(py: &mut PythonDrift, found: &Providers) {
    for (key, packages) in found {
        if let Some(top) = key.strip_prefix(CONTENTS_MODULE) {
            let list: Vec<String> = packages.iter().map(|p| format!("deb:{p}")).collect();
            py.add_providers(top, &list);
        }
    }
}

/// Ties the ELF analysis's missing libraries to the Python extension
/// modules that need them.
pub fn link_extensions(
    drift: &mut PythonDrift,
    fs: &ImageFs,
    manifest: &CuratedManifest,
    facts: &PythonFacts,
    missing: &[MissingLibrary],
) {
    let suffixes = facts.extension_suffixes();
    let sys_path = facts.sys_path();
    for m in missing {
        let Some(real) = fs.resolve(&m.binary) else {
            continue;
        };
        let Some(entry) = sys_path
            .iter()
            .find(|d| real.starts_with(&format!("{}/", d.trim_end_matches('/'))))
        else {
            continue;
        };
        let rel = &real[entry.trim_end_matches('/').len() + 1..];
        let Some(stem) = suffixes.iter().find_map(|s| rel.strip_suffix(s.as_str())) else {
            continue;
        };
        let module = stem.replace('/', ".");
        let provider = manifest
            .packages
            .iter()
            .find(|p| {
                p.files
                    .iter()
                    .any(|f| f == &real || fs.resolve(f).as_deref() == Some(real.as_str()))
            })
            .map(|p| Provider {
                kind: "debian".into(),
                name: p.name.clone(),
            })
            .or_else(|| {
                drift
                    .distributions
                    .iter()
                    .find(|d| {
                        d.kind == "wheel"
                            && d.modules
                                .iter()
                                .any(|x| module.split('.').next() == Some(x.as_str()))
                    })
                    .map(|d| Provider {
                        kind: "wheel".into(),
                        name: d.name.clone(),
                    })
            });
        drift.extension_problems.push(ExtensionProblem {
            module,
            path: real.clone(),
            provider,
            library: m.library.clone(),
            reason: m.reason.clone(),
            library_providers: m.providers.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{CuratedPackage, Node};

    fn file(fs: &mut ImageFs, p: &str, data: &str) {
        fs.insert(
            p,
            Node::File {
                data: Some(data.as_bytes().to_vec()),
            },
        );
    }

    fn facts() -> PythonFacts {
        PythonFacts {
            interpreter: "/usr/bin/python3.11".into(),
            version: "3.11".into(),
            full_version: "3.11.2".into(),
            machine: "x86_64".into(),
            app_dir: "/app".into(),
            app_source: "images/x/app".into(),
            pythonpath: vec![],
            modules: vec![],
        }
    }

    fn image() -> (ImageFs, CuratedManifest) {
        let mut fs = ImageFs::new();
        file(&mut fs, "/usr/lib/python3.11/os.py", "");
        file(&mut fs, "/usr/lib/python3.11/typing.py", "");
        file(&mut fs, "/usr/lib/python3.11/importlib/__init__.py", "");
        file(&mut fs, "/usr/lib/python3.11/json/__init__.py", "");
        file(
            &mut fs,
            "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            "",
        );
        file(
            &mut fs,
            "/usr/lib/python3/dist-packages/yaml/__init__.py",
            "",
        );
        file(
            &mut fs,
            "/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so",
            "",
        );
        let site = "/usr/local/lib/python3.11/dist-packages";
        file(&mut fs, &format!("{site}/dateutil/__init__.py"), "");
        file(&mut fs, &format!("{site}/dateutil/parser/__init__.py"), "");
        file(
            &mut fs,
            &format!("{site}/python_dateutil-2.9.0.post0.dist-info/METADATA"),
            "Name: python-dateutil\nVersion: 2.9.0.post0\nRequires-Dist: six >=1.5\n\n",
        );
        file(
            &mut fs,
            &format!("{site}/python_dateutil-2.9.0.post0.dist-info/RECORD"),
            "dateutil/__init__.py,sha256=x,0\ndateutil/parser/__init__.py,sha256=x,0\npython_dateutil-2.9.0.post0.dist-info/RECORD,,\n",
        );
        file(
            &mut fs,
            &format!("{site}/unused_dist-1.0.dist-info/METADATA"),
            "Name: unused-dist\nVersion: 1.0\n\n",
        );
        file(
            &mut fs,
            &format!("{site}/unused_dist-1.0.dist-info/RECORD"),
            "unused_dist/__init__.py,sha256=x,0\n",
        );
        file(&mut fs, &format!("{site}/unused_dist/__init__.py"), "");
        fs.insert("/usr/lib/python3/dist-packages/nspkg/sub", Node::Dir);
        file(&mut fs, "/usr/lib/python3/dist-packages/nspkg/sub/m.py", "");
        file(
            &mut fs,
            "/app/svc/__init__.py",
            "from . import util\nfrom .util import helper\n",
        );
        file(
            &mut fs,
            "/app/svc/util.py",
            "import os.path\nimport json\nimport yaml\nfrom dateutil import parser\nimport _ssl\nimport sys\nimport nspkg.sub.m\n",
        );
        file(
            &mut fs,
            "/app/svc/bad.py",
            "import requests\ntry:\n    import ujson\nexcept ImportError:\n    ujson = None\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mypy_extensions\nimport importlib\nimportlib.import_module(f'plugins.{1}')\nimport dateutil.nothere\n",
        );
        let manifest = CuratedManifest {
            packages: vec![CuratedPackage {
                name: "python3-yaml".into(),
                version: Some("6.0-3+b2".into()),
                files: vec![
                    "/usr/lib/python3/dist-packages/yaml/__init__.py".into(),
                    "/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so"
                        .into(),
                ],
            }],
        };
        (fs, manifest)
    }

    #[test]
    fn imports_resolve_inside_the_image_and_map_to_providers() {
        let (fs, manifest) = image();
        let cands = |top: &str| {
            if top == "requests" {
                vec!["requests==2.32.3".to_string()]
            } else {
                vec![]
            }
        };
        let d = analyse(&fs, &manifest, &facts(), &cands).unwrap();
        let prov = |module: &str| {
            d.imports
                .iter()
                .find(|i| i.site.module == module)
                .and_then(|i| i.provider.clone())
                .map(|p| (p.kind, p.name))
        };
        assert_eq!(prov("yaml"), Some(("debian".into(), "python3-yaml".into())));
        assert_eq!(
            prov("dateutil"),
            Some(("wheel".into(), "python-dateutil".into()))
        );
        assert_eq!(prov("json").unwrap().0, "stdlib");
        assert_eq!(prov("os.path").unwrap().0, "stdlib");
        assert_eq!(prov("_ssl").unwrap().0, "stdlib");
        assert_eq!(prov("svc.util").unwrap().0, "application");
        assert_eq!(prov("nspkg.sub.m").unwrap().0, "unowned");
        // Failing: requests (with the lock's candidate) and a missing submodule.
        let un: Vec<(&str, u32, &str)> = d
            .unresolved
            .iter()
            .map(|u| (u.site.file.as_str(), u.site.line, u.site.module.as_str()))
            .collect();
        assert_eq!(
            un,
            [
                ("images/x/app/svc/bad.py", 1, "requests"),
                ("images/x/app/svc/bad.py", 11, "dateutil.nothere")
            ]
        );
        assert_eq!(d.unresolved[0].providers, ["requests==2.32.3"]);
        let f = d.failures("x");
        assert!(f[0].contains("images/x/app/svc/bad.py:1: `import requests`: module requests is not in the image; it is provided by distribution requests==2.32.3"), "{f:?}");
        // Reported, not failing.
        assert_eq!(d.optional.len(), 1);
        assert_eq!(d.type_checking.len(), 1);
        assert_eq!(d.dynamic.len(), 1);
        // pip check: dateutil needs six.
        assert_eq!(d.missing_requirements.len(), 1);
        assert!(
            f.iter()
                .any(|l| l.contains("distribution python-dateutil 2.9.0.post0 requires six")),
            "{f:?}"
        );
        assert_eq!(d.unused, ["unused-dist"]);
        assert!(d.smoke_modules.contains(&"requests".to_string()));
        assert!(d.smoke_modules.contains(&"unused_dist".to_string()));
        assert!(!d.smoke_modules.contains(&"mypy_extensions".to_string()));
        assert!(!d.smoke_modules.contains(&"ujson".to_string()));
        assert!(!d.ok());
    }

    #[test]
    fn unresolved_modules_are_looked_up_where_the_interpreter_would_find_them() {
        let (mut fs, manifest) = image();
        file(
            &mut fs,
            "/app/svc/extra.py",
            "import yaml\nimport yaml.nodes\n",
        );
        let f = facts();
        let mut d = analyse(&fs, &manifest, &f, &|_| vec![]).unwrap();
        let q = contents_query(&d, &f);
        assert!(q.names().contains("python:yaml"));
        let index = "\
usr/lib/python3/dist-packages/yaml/__init__.py    python/python3-yaml
usr/lib/python3/dist-packages/yaml/nodes.py       python/python3-yaml
usr/lib/python3/dist-packages/_yaml.cpython-311-x86_64-linux-gnu.so python/python3-yaml
usr/share/doc/yaml/__init__.py                    doc/not-a-module
";
        let found = q.scan(index.as_bytes(), "test").unwrap();
        assert_eq!(
            found["python:yaml"].iter().collect::<Vec<_>>(),
            ["python3-yaml"]
        );
        name_module_providers(&mut d, &found);
        let yaml: Vec<_> = d
            .unresolved
            .iter()
            .filter(|u| u.site.top_level() == "yaml")
            .collect();
        assert!(!yaml.is_empty());
        for u in yaml {
            assert_eq!(u.providers, ["deb:python3-yaml"]);
        }
    }

    #[test]
    fn a_source_that_does_not_parse_names_path_and_line() {
        let (mut fs, manifest) = image();
        file(&mut fs, "/app/svc/broken.py", "x = 1\ndef (:\n");
        let e = analyse(&fs, &manifest, &facts(), &|_| vec![]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("images/x/app/svc/broken.py", 2));
    }

    #[test]
    fn missing_libraries_of_extensions_name_their_module() {
        let (fs, manifest) = image();
        let mut d = analyse(&fs, &manifest, &facts(), &|_| vec![]).unwrap();
        let missing = vec![MissingLibrary {
            binary: "/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so"
                .into(),
            needed_by: "x".into(),
            library: "libyaml-0.so.2".into(),
            reason: "not found".into(),
            providers: vec!["libyaml-0-2".into()],
            searched: vec![],
        }];
        link_extensions(&mut d, &fs, &manifest, &facts(), &missing);
        let f = d.failures("x").join("\n");
        assert!(f.contains("Python extension module yaml._yaml (/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so of debian python3-yaml) needs libyaml-0.so.2: not found; it is provided by package libyaml-0-2"), "{f}");
    }
}
