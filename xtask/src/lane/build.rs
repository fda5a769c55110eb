//! The build engine (`cargo xtask build`, and every command that builds): image definitions in, OCI image layouts out.
//!
//! Plan, then execute: [`plan`] resolves every image into a [`BuildPlan`]
//! (images in build order, their layers and every entry of every layer, the
//! binaries cargo must build); `--dry-run` prints it. [`execute`] runs cargo,
//! encodes layers through the action cache and writes each layout atomically
//! (a temporary folder renamed into place).

use crate::adapters::fault;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::{Context, Result, bail};

use crate::adapters::cache::Cache;
use crate::adapters::remote_cache::{ENV_CACHE, RemotePool, RemoteStats};
use crate::adapters::workspace::{self, BinaryRequest, GitFacts, Workspace};
use crate::report::Reporter;
use lane_core::distribution::BuiltImage;
use lane_core::distribution::BuiltLayer;
use lane_core::distribution::CacheStats;
use lane_core::layer::{self, Contents, Entry, EntryKind, LayerDigests};
use lane_core::oci::{self, BaseImage, ImageInputs, LayerRecord, SourceFacts};
use lane_core::spec::{BaseRef, ImagePath, ImageSpec, LayerSpec};

/// Name of the layer that holds an image's `[debian]` packages.
pub const DEBIAN_LAYER: &str = "debian";
/// Name of the layer that holds an image's locked Python wheels.
pub const WHEELS_LAYER: &str = "python-wheels";
/// Name of the layer that holds an image's Python application sources.
pub const APP_LAYER: &str = "python-app";

/// The `[python] app` sources as a files layer (0644 files, 0755 folders).
fn app_layer(spec: &ImageSpec) -> Option<LayerSpec> {
    let py = spec.python.as_ref()?;
    let app = py.app.as_ref()?;
    Some(LayerSpec {
        name: APP_LAYER.into(),
        binaries: Vec::new(),
        files: vec![lane_core::spec::FileSpec {
            src: app.clone(),
            dest: py.app_dir.clone(),
            mode: Some(0o644),
            dir_mode: 0o755,
            owner: lane_core::spec::Owner::ROOT,
            at: py.at.clone(),
        }],
        dirs: Vec::new(),
        symlinks: Vec::new(),
    })
}

/// Parses every Python source of the application (Ruff's parser, the
/// image's Python version) before anything is built: a file that does not
/// parse stops the build, named by path and line.
pub fn check_python_sources(root: &Path, spec: &ImageSpec) -> Result<usize> {
    let Some(app) = spec.python.as_ref().and_then(|p| p.app.as_ref()) else {
        return Ok(0);
    };
    let dir = root.join(&spec.dir).join(app);
    let mut n = 0;
    let mut errors = Vec::new();
    for item in walkdir::WalkDir::new(&dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let item = item.with_context(|| format!("walking {}", dir.display()))?;
        let Some(rel) = item.path().strip_prefix(&dir).ok().and_then(|r| r.to_str()) else {
            continue;
        };
        if !rel.ends_with(".py") || !item.file_type().is_file() {
            continue;
        }
        let shown = format!("{}/{app}/{rel}", spec.dir);
        let text = fs::read(item.path()).with_context(|| format!("reading {shown}"))?;
        let Ok(text) = String::from_utf8(text) else {
            errors.push(format!(
                "{shown}:1:1: not UTF-8; Python sources must be UTF-8"
            ));
            continue;
        };
        let (module, is_package) =
            lane_core::python::imports::module_of(rel).unwrap_or((String::new(), false));
        if let Err(e) = lane_core::python::imports::collect(&shown, &module, is_package, &text) {
            errors.push(e.to_string());
        }
        n += 1;
    }
    if !errors.is_empty() {
        bail!(
            "image {}: Python sources do not parse; nothing was built:\n  {}",
            spec.name,
            errors.join("\n  ")
        );
    }
    Ok(n)
}

/// Where a build reads and writes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Folder that receives one OCI layout per image (`target/images`).
    pub images_dir: PathBuf,
    /// The action cache (`target/lane-cache`).
    pub cache_dir: PathBuf,
    /// Cargo's target dir for the payload binaries (`target/lane-cargo`).
    pub cargo_target_dir: PathBuf,
    /// Source facts to use instead of asking git (the repro check's copy).
    pub source: Option<SourceFacts>,
    /// No progress output (`--json`, tests).
    pub quiet: bool,
    /// The shared action cache in a registry, if any (never for the
    /// reproducible gate's builds).
    pub shared_cache: Option<SharedCache>,
    /// How many images build at once (independent images of one wave of
    /// the image graph); 1 builds them one after another.
    pub jobs: usize,
    /// The umask cargo runs under (the reproducibility check's second
    /// build sets 077); `None` inherits the process's.
    pub cargo_umask: Option<u32>,
    /// Stops the build between steps (and kills its cargo) when set: the
    /// reproducible gate's second build, once it is no longer needed.
    pub cancel: Option<workspace::Cancel>,
    /// Computes each image's input key from git's index on a clean tree
    /// and records what it built under it (never for the reproducible
    /// gate's second build).
    pub index_keys: bool,
}

/// The default of `--jobs`: the machine's cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Where the shared cache is and whether this run may write to it.
#[derive(Debug, Clone)]
pub struct SharedCache {
    /// `HOST[:PORT]/REPO`.
    pub location: String,
    /// Only an authoritative run writes.
    pub writes: bool,
}

/// The shared action cache at `location` (`--cache`), else at
/// `$LANE_CACHE`; it takes writes when the run is `authoritative`.
pub fn shared_cache(location: Option<String>, authoritative: bool) -> Option<SharedCache> {
    location
        .or_else(|| std::env::var(ENV_CACHE).ok().filter(|v| !v.is_empty()))
        .map(|location| SharedCache {
            location,
            writes: authoritative,
        })
}

impl BuildOptions {
    pub fn for_workspace(ws: &Workspace) -> BuildOptions {
        let target = ws.root.join("target");
        BuildOptions {
            images_dir: target.join("images"),
            cache_dir: target.join("lane-cache"),
            cargo_target_dir: target.join("lane-cargo"),
            source: None,
            quiet: false,
            shared_cache: None,
            jobs: default_jobs(),
            cargo_umask: None,
            cancel: None,
            index_keys: true,
        }
    }
}

pub use crate::lane::plan::{BuildPlan, PlannedBinary, PlannedEntry, PlannedImage, PlannedLayer};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    pub images: Vec<BuiltImage>,
    /// What the shared cache did (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_cache: Option<RemoteStats>,
    #[serde(skip)]
    pub source: Option<SourceFacts>,
    #[serde(skip)]
    pub git: Option<GitFacts>,
}

/// Loads the workspace's images, selects `names` (and their bases), checks
/// every source and binary, and returns what a build would do.
pub fn plan(
    ws: &Workspace,
    names: &[String],
    opts: &BuildOptions,
) -> Result<(BuildPlan, Option<GitFacts>)> {
    let all = ws.load_images()?;
    let images = workspace::select(&all, names)?;
    for img in &images {
        if let BaseRef::Pinned { repository, digest } = &img.base {
            crate::adapters::base::check_pinned(&ws.root, img, &format!("{repository}@{digest}"))?;
        }
    }
    let (source, git) = match &opts.source {
        Some(s) => (s.clone(), None),
        None => {
            let (s, g) = workspace::source_facts(ws)?;
            (s, Some(g))
        }
    };
    let toolchain = workspace::toolchain()?;
    let requests = workspace::check_binaries(ws, &images)?;
    let binaries = requests
        .iter()
        .map(|r| PlannedBinary {
            request: r.clone(),
            path: workspace::binary_path(&opts.cargo_target_dir, &toolchain.triple, r.link, &r.bin),
        })
        .collect::<Vec<_>>();
    let bin_path = |package: &str, bin: &str| -> PathBuf {
        binaries
            .iter()
            .find(|b| b.request.package == package && b.request.bin == bin)
            .map(|b| b.path.clone())
            .unwrap_or_default()
    };
    let mut planned = Vec::new();
    for spec in images {
        let mut layers = Vec::new();
        if spec.debian.is_some() {
            layers.push(PlannedLayer {
                name: DEBIAN_LAYER.into(),
                entries: crate::adapters::apt::planned(&ws.root, &spec)?
                    .into_iter()
                    .map(|(path, source)| PlannedEntry {
                        path,
                        kind: "deb",
                        mode: "0644".into(),
                        owner: "0:0".into(),
                        source: Some(source),
                        target: None,
                    })
                    .collect(),
            });
        }
        if spec.python.is_some() {
            check_python_sources(&ws.root, &spec)?;
            let wheels = crate::adapters::pip::locked_wheels(&ws.root, &spec)?;
            if !wheels.is_empty() {
                layers.push(PlannedLayer {
                    name: WHEELS_LAYER.into(),
                    entries: wheels
                        .into_iter()
                        .map(|w| PlannedEntry {
                            path: format!("{} {}", w.name, w.version),
                            kind: "wheel",
                            mode: "0644".into(),
                            owner: "0:0".into(),
                            source: Some(format!("{} {} {}", w.filename, w.size, w.sha256)),
                            target: None,
                        })
                        .collect(),
                });
            }
        }
        for l in app_layer(&spec).iter().chain(&spec.layers) {
            let entries = resolve_layer(&ws.root, &spec, l, &bin_path, false)?;
            layers.push(PlannedLayer {
                name: l.name.clone(),
                entries: entries.iter().map(show_entry).collect(),
            });
        }
        planned.push(PlannedImage {
            spec,
            layers,
            input_key: None,
        });
    }
    let mut plan = BuildPlan {
        source,
        toolchain,
        encoder: layer::encoder_id(),
        binaries,
        images: planned,
    };
    if opts.index_keys {
        let dirty = match &git {
            Some(g) => g.dirty,
            None => workspace::git_facts(&ws.root)?.dirty,
        };
        if let Some(index) = crate::adapters::git_index::GitIndex::read(&ws.root, dirty)? {
            crate::lane::input_keys::fill(ws, &mut plan, &index)?;
        }
    }
    Ok((plan, git))
}

fn show_entry(e: &Entry) -> PlannedEntry {
    let (kind, source, target) = match &e.kind {
        EntryKind::Dir => ("dir", None, None),
        EntryKind::File { source, .. } => ("file", Some(source.clone()), None),
        EntryKind::Symlink { target } => ("symlink", None, Some(target.clone())),
    };
    PlannedEntry {
        path: e.path.to_string(),
        kind,
        mode: format!("{:04o}", e.mode),
        owner: format!("{}:{}", e.owner.uid, e.owner.gid),
        source,
        target,
    }
}

/// Resolves one layer into normalised entries. Sources are checked: they must
/// exist and stay inside the workspace (a symlink that leads out is refused).
/// With `stat_binaries`, built binaries are sized; otherwise they get size 0
/// (planning happens before cargo runs).
fn resolve_layer(
    root: &Path,
    spec: &ImageSpec,
    l: &LayerSpec,
    bin_path: &dyn Fn(&str, &str) -> PathBuf,
    stat_binaries: bool,
) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for b in &l.binaries {
        let path = bin_path(&b.package, &b.bin);
        let size = if stat_binaries {
            fs::metadata(&path)
                .with_context(|| format!("cargo produced no binary at {}", path.display()))?
                .len()
        } else {
            0
        };
        entries.push(Entry {
            path: b.dest.clone(),
            kind: EntryKind::File {
                source: path.to_string_lossy().into_owned(),
                size,
            },
            mode: b.mode,
            owner: b.owner,
        });
    }
    for f in &l.files {
        let src = root.join(&spec.dir).join(&f.src);
        let meta = fs::symlink_metadata(&src).map_err(|e| {
            anyhow::anyhow!(
                "{}: source {} of layer {:?} cannot be read ({e}); create it or fix src (paths are relative to {}/)",
                f.at,
                f.src,
                l.name,
                spec.dir
            )
        })?;
        let real = inside_workspace(root, spec, &src, &f.at)?;
        let meta = if meta.file_type().is_symlink() {
            fs::metadata(&real)?
        } else {
            meta
        };
        if meta.is_dir() {
            entries.push(Entry {
                path: f.dest.clone(),
                kind: EntryKind::Dir,
                mode: f.dir_mode,
                owner: f.owner,
            });
            for item in walkdir::WalkDir::new(&src).follow_links(true).min_depth(1) {
                let item = item.with_context(|| format!("{}: walking {}", f.at, f.src))?;
                let rel = item
                    .path()
                    .strip_prefix(&src)
                    .expect("walkdir yields paths below its root");
                let rel = rel.to_str().with_context(|| {
                    format!(
                        "{}: {} is not valid UTF-8; rename it",
                        f.at,
                        item.path().display()
                    )
                })?;
                let real = inside_workspace(root, spec, item.path(), &f.at)?;
                let dest = f.dest.join(rel);
                let m = fs::metadata(&real)?;
                if m.is_dir() {
                    entries.push(Entry {
                        path: dest,
                        kind: EntryKind::Dir,
                        mode: f.dir_mode,
                        owner: f.owner,
                    });
                } else if m.is_file() {
                    entries.push(file_entry(dest, &real, &m, f.mode, f.owner));
                } else {
                    bail!(
                        "{}: {} is neither a file nor a directory; only those can be packaged",
                        f.at,
                        item.path().display()
                    );
                }
            }
        } else if meta.is_file() {
            entries.push(file_entry(f.dest.clone(), &real, &meta, f.mode, f.owner));
        } else {
            bail!(
                "{}: source {} is neither a file nor a directory; only those can be packaged",
                f.at,
                f.src
            );
        }
    }
    for d in &l.dirs {
        entries.push(Entry {
            path: d.dest.clone(),
            kind: EntryKind::Dir,
            mode: d.mode,
            owner: d.owner,
        });
    }
    for s in &l.symlinks {
        entries.push(Entry {
            path: s.dest.clone(),
            kind: EntryKind::Symlink {
                target: s.target.clone(),
            },
            mode: 0o777,
            owner: lane_core::spec::Owner::ROOT,
        });
    }
    layer::normalise(entries)
        .with_context(|| format!("{}/image.toml: layer {:?}", spec.dir, l.name))
}

fn file_entry(
    dest: ImagePath,
    real: &Path,
    meta: &fs::Metadata,
    mode: Option<u32>,
    owner: lane_core::spec::Owner,
) -> Entry {
    use std::os::unix::fs::PermissionsExt;
    // Only the owner's execute bit decides the default, so the umask of the
    // checkout does not change the image.
    let mode = mode.unwrap_or(if meta.permissions().mode() & 0o100 != 0 {
        0o755
    } else {
        0o644
    });
    Entry {
        path: dest,
        kind: EntryKind::File {
            source: real.to_string_lossy().into_owned(),
            size: meta.len(),
        },
        mode,
        owner,
    }
}

/// The real path of `path`, refused when it lies outside the workspace.
fn inside_workspace(root: &Path, spec: &ImageSpec, path: &Path, at: &str) -> Result<PathBuf> {
    let real = path
        .canonicalize()
        .with_context(|| format!("{at}: resolving {}", path.display()))?;
    if !real.starts_with(root) {
        bail!(
            "{at}: {} is a symlink that leads outside the workspace (to {}); copy the file into the workspace instead",
            path.display(),
            real.display()
        );
    }
    // git's own folder (a CI checkout keeps its token header in
    // .git/config) and target/ (keygen's private key, the caches) are
    // never an image's source, whatever a link says.
    let rel = real.strip_prefix(root).unwrap_or(&real);
    let private = rel.components().any(|c| c.as_os_str() == ".git") || rel.starts_with("target");
    if private {
        bail!(
            "{at}: {} leads to {}, inside {}: .git/ and target/ hold credentials and keys and are never packaged; put the file in the image's folder",
            path.display(),
            real.display(),
            if rel.starts_with("target") {
                "target/"
            } else {
                ".git/"
            }
        );
    }
    // An image's sources are its own folder's, or a workspace path its
    // image.toml allows on purpose (`[sources] allow`).
    let own = root
        .join(&spec.dir)
        .canonicalize()
        .unwrap_or_else(|_| root.join(&spec.dir));
    let allowed = spec
        .sources_allow
        .iter()
        .any(|a| real.starts_with(root.join(a)));
    if !real.starts_with(&own) && !allowed {
        bail!(
            "{at}: {} leads to {}, outside the image's folder {}/; keep an image's sources in its folder, or allow the path on purpose in its image.toml: [sources] allow = [\"{}\"]",
            path.display(),
            real.display(),
            spec.dir,
            rel.display()
        );
    }
    Ok(real)
}

/// Reads packaged files from disk, counting the bytes.
pub struct FsContents {
    pub bytes_read: u64,
}

impl Contents for FsContents {
    fn open(&mut self, source: &str) -> io::Result<Box<dyn Read + '_>> {
        let f = io::BufReader::with_capacity(1 << 20, fs::File::open(source)?);
        Ok(Box::new(Counting {
            inner: f,
            count: &mut self.bytes_read,
        }))
    }
}

struct Counting<'a, R> {
    inner: R,
    count: &'a mut u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.count += n as u64;
        Ok(n)
    }
}

/// Runs the plan: cargo, layers (through the cache), layouts.
pub fn execute(ws: &Workspace, plan: &BuildPlan, opts: &BuildOptions) -> Result<Vec<BuiltImage>> {
    execute_shared(ws, plan, opts).map(|(images, _)| images)
}

/// [`execute`], and what the shared cache did.
pub fn execute_shared(
    ws: &Workspace,
    plan: &BuildPlan,
    opts: &BuildOptions,
) -> Result<(Vec<BuiltImage>, Option<RemoteStats>)> {
    let remote = open_shared(opts)?;
    execute_with(ws, plan, opts, remote)
}

/// The shared cache of `opts`, opened (its preflight run), if any.
pub fn open_shared(opts: &BuildOptions) -> Result<Option<RemotePool>> {
    let progress = Reporter { quiet: opts.quiet };
    Ok(match &opts.shared_cache {
        Some(c) => {
            let rc = RemotePool::open(&c.location, c.writes, opts.jobs)?;
            progress.say(format_args!(
                "shared cache: {} ({}, {})",
                c.location,
                rc.who(),
                if c.writes {
                    "read and write: an authoritative run"
                } else {
                    "read only: not an authoritative run"
                }
            ));
            Some(rc)
        }
        None => None,
    })
}

/// [`execute_shared`] with the shared cache already open.
pub fn execute_with(
    ws: &Workspace,
    plan: &BuildPlan,
    opts: &BuildOptions,
    remote: Option<RemotePool>,
) -> Result<(Vec<BuiltImage>, Option<RemoteStats>)> {
    let progress = Reporter { quiet: opts.quiet };
    if !plan.binaries.is_empty() {
        progress.say(format_args!(
            "cargo build --locked --release ({})",
            plan.binaries
                .iter()
                .map(|b| b.request.bin.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let requests: BTreeSet<BinaryRequest> =
            plan.binaries.iter().map(|b| b.request.clone()).collect();
        workspace::cargo_build(
            ws,
            &opts.cargo_target_dir,
            &plan.toolchain,
            plan.source.source_date_epoch,
            &requests,
            opts.quiet,
            opts.cargo_umask,
            opts.cancel.as_ref(),
        )?;
    }
    let all = ws.load_images()?;
    let cache = RwLock::new(Cache::open(&opts.cache_dir)?);
    fs::create_dir_all(&opts.images_dir)
        .with_context(|| format!("creating {}", opts.images_dir.display()))?;
    let ctx = Ctx {
        ws,
        plan,
        opts,
        all: &all,
        arch: oci::arch_of_triple(&plan.toolchain.triple),
        cache: &cache,
        remote: &remote,
        progress: &progress,
    };
    // Waves over the image graph: an image waits for its workspace base;
    // the images of one wave build at once, at most `jobs` of them. The
    // outcome is the same in any order: each image is a function of its
    // inputs and its base.
    let depth = depths(&plan.images);
    let mut built: BTreeMap<String, (BuiltImage, BaseImage)> = BTreeMap::new();
    for d in 0..=depth.iter().copied().max().unwrap_or(0) {
        let wave: Vec<&PlannedImage> = plan
            .images
            .iter()
            .zip(&depth)
            .filter(|(_, x)| **x == d)
            .map(|(p, _)| p)
            .collect();
        if let Some(c) = &opts.cancel {
            c.check()?;
        }
        let results = in_parallel(&wave, opts.jobs, |p| build_image(&ctx, p, &built));
        for (p, r) in wave.iter().zip(results) {
            built.insert(p.spec.name.clone(), r?);
        }
    }
    let out: Vec<BuiltImage> = plan
        .images
        .iter()
        .map(|p| built[&p.spec.name].0.clone())
        .collect();
    cache
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a build thread panicked"))?
        .save()?;
    let stats = remote.map(RemotePool::stats);
    for r in stats.iter().flat_map(|s| &s.rejected) {
        progress.warn(format_args!("shared cache: entry ignored: {r}"));
    }
    Ok((out, stats))
}

/// What every image's build shares.
struct Ctx<'a> {
    ws: &'a Workspace,
    plan: &'a BuildPlan,
    opts: &'a BuildOptions,
    all: &'a [ImageSpec],
    arch: &'a str,
    cache: &'a RwLock<Cache>,
    remote: &'a Option<RemotePool>,
    progress: &'a Reporter,
}

fn read(cache: &RwLock<Cache>) -> std::sync::RwLockReadGuard<'_, Cache> {
    cache.read().unwrap_or_else(|e| e.into_inner())
}

fn write(cache: &RwLock<Cache>) -> std::sync::RwLockWriteGuard<'_, Cache> {
    cache.write().unwrap_or_else(|e| e.into_inner())
}

/// How deep each image sits in the plan's graph: 0 without a workspace
/// base, else one more than its base.
fn depths(images: &[PlannedImage]) -> Vec<usize> {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    // The plan lists bases before the images on them.
    for p in images {
        let d = match &p.spec.base {
            BaseRef::Workspace { image } => depth.get(image.as_str()).map_or(0, |d| d + 1),
            _ => 0,
        };
        depth.insert(&p.spec.name, d);
    }
    images.iter().map(|p| depth[p.spec.name.as_str()]).collect()
}

/// `f` over `items` on at most `jobs` threads; the results in order.
pub fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if jobs <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    // The caller's cancel (a stopped second build) reaches the threads.
    let cancel = workspace::Cancel::current();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(items.len()) {
            s.spawn(|| {
                workspace::Cancel::scope(cancel.as_ref(), || {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(item) = items.get(i) else { break };
                        let r = f(item);
                        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    }
                })
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item ran")
        })
        .collect()
}

/// One image: its layers through the caches, its documents, its layout.
fn build_image(
    ctx: &Ctx,
    planned: &PlannedImage,
    built: &BTreeMap<String, (BuiltImage, BaseImage)>,
) -> Result<(BuiltImage, BaseImage)> {
    let bin_path = |package: &str, bin: &str| -> PathBuf {
        ctx.plan
            .binaries
            .iter()
            .find(|b| b.request.package == package && b.request.bin == bin)
            .map(|b| b.path.clone())
            .unwrap_or_default()
    };
    let spec = &planned.spec;
    let mut stats = CacheStats::default();
    let mut records = Vec::new();
    // The pinned Debian packages come first (verified before use), then
    // the image's own layers, each through the action cache.
    let mut layers = Vec::new();
    if let Some(c) = &ctx.opts.cancel {
        c.check()?;
    }
    if spec.debian.is_some() {
        let entries = crate::adapters::apt::layer_entries(&ctx.ws.root, &ctx.opts.cache_dir, spec)?;
        let created_by = "cargo xtask build: Debian packages of lockfiles/debian.lock".to_string();
        layers.push((DEBIAN_LAYER.to_string(), entries, created_by));
    }
    // Wheels are verified and installed in memory before any layer is
    // encoded: a bad wheel builds nothing.
    let wheels =
        crate::adapters::pip::layer_entries(&ctx.ws.root, &ctx.opts.cache_dir, ctx.all, spec)?;
    if !wheels.is_empty() {
        layers.push((
            WHEELS_LAYER.to_string(),
            wheels,
            "cargo xtask build: Python wheels of lockfiles/python.lock".to_string(),
        ));
    }
    for l in app_layer(spec).iter().chain(&spec.layers) {
        let entries = resolve_layer(&ctx.ws.root, spec, l, &bin_path, true)?;
        layers.push((
            l.name.clone(),
            entries,
            format!("cargo xtask build: layer {}", l.name),
        ));
    }
    for (name, entries, created_by) in layers {
        let d = build_layer(
            ctx.cache,
            ctx.remote,
            &entries,
            ctx.plan.source.source_date_epoch,
            &mut stats,
            ctx.progress,
            &spec.name,
            &name,
        )?;
        records.push(LayerRecord::new(&d, created_by));
    }
    let pulled;
    let base = match &spec.base {
        BaseRef::Workspace { image } => Some(&built[image].1),
        BaseRef::Pinned { repository, digest } => {
            pulled =
                crate::adapters::base::fetch(&read(ctx.cache), repository, digest, ctx.opts.quiet)?;
            Some(&pulled)
        }
        BaseRef::Scratch => None,
    };
    let repo_tags: Vec<String> = spec
        .tags
        .iter()
        .map(|t| format!("{}:{t}", spec.repository))
        .collect();
    let docs = oci::image_docs(&ImageInputs {
        arch: ctx.arch,
        runtime: &spec.config,
        base,
        layers: &records,
        source: &ctx.plan.source,
        ref_name: spec.tags[0].as_str(),
        repo_tags: &repo_tags,
    })?;
    let layout = ctx.opts.images_dir.join(&spec.name);
    write_layout(&read(ctx.cache), &layout, &docs)?;
    let image = BuiltImage {
        name: spec.name.clone(),
        repository: spec.repository.clone(),
        tags: spec.tags.clone(),
        manifest_digest: docs.manifest.digest.clone(),
        config_digest: docs.config.digest.clone(),
        layout: layout.clone(),
        layers: docs
            .layers
            .iter()
            .map(|l| BuiltLayer {
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.size,
            })
            .collect(),
        cache: stats,
        input_key: planned.input_key.clone(),
        held: false,
    };
    if let Some(key) = &planned.input_key {
        read(ctx.cache).record_image(key, &image.manifest_digest)?;
        if let Some(pool) = ctx.remote {
            pool.with(|rc| rc.store_image(key, &image.manifest_digest));
        }
    }
    ctx.progress.say(format_args!(
        "built {} {} ({} layers, cache {} hit / {} miss{})",
        spec.name,
        image.manifest_digest,
        image.layers.len(),
        image.cache.hits,
        image.cache.misses,
        match image.cache.remote_hits {
            0 => String::new(),
            n => format!(" / {n} from the shared cache"),
        }
    ));
    let as_base = BaseImage {
        name: format!("workspace://{}", spec.name),
        manifest_digest: docs.manifest.digest.to_string(),
        layers: docs.layers.clone(),
        config: docs.runtime.clone(),
    };
    Ok((image, as_base))
}

/// One layer through the action cache: a hit reuses the blob without reading
/// any packaged file; then the shared cache, if any (each entry verified);
/// a miss encodes it once, reading each file once. The local cache is read
/// by many builds at once and written under its lock only for a moment.
#[allow(clippy::too_many_arguments)]
fn build_layer(
    cache: &RwLock<Cache>,
    remote: &Option<RemotePool>,
    entries: &[Entry],
    mtime: u64,
    stats: &mut CacheStats,
    progress: &Reporter,
    image: &str,
    layer_name: &str,
) -> Result<LayerDigests> {
    // No source of any kind (files, .debs, wheels) may carry a whiteout.
    for e in entries {
        if let Some(part) = e.path.whiteout() {
            bail!(
                "image {image}, layer {layer_name}: {}",
                lane_core::spec::whiteout_refused(&e.path.to_string(), part)
            );
        }
    }
    let mut metas = BTreeMap::new();
    for e in entries {
        if let EntryKind::File { source, .. } = &e.kind {
            metas.insert(
                source.clone(),
                fs::metadata(source).with_context(|| format!("reading {source}"))?,
            );
        }
    }
    let key_now =
        |c: &Cache| layer::cache_key(entries, mtime, &|src| c.known_digest(src, &metas[src]));
    let mut key = key_now(&read(cache));
    // Some file's digest is unknown (a cold build, a new clone, files git
    // rewrote on a branch switch, a cache restored into a new checkout):
    // hash what is needed (reading, not compressing) and compute the key,
    // when a cache may hold the layer. With a shared cache, whose entries
    // are checked against the tar this run would write, one pass gives
    // both the files' digests and the tar's; else only the unknown files
    // are hashed, and only when the local cache holds any layer (on an
    // empty one no lookup can hit).
    let mut tar = None;
    if key.is_none() {
        let mut files = FsContents { bytes_read: 0 };
        let mut digests: Vec<(String, lane_core::id::Digest)> = Vec::new();
        if remote.is_some() {
            let (tar_digests, file_digests) = layer::tar_digests(entries, mtime, &mut files)?;
            tar = Some(tar_digests);
            digests.extend(file_digests);
        } else if read(cache).holds_layers() {
            for src in metas.keys() {
                if read(cache).known_digest(src, &metas[src]).is_none() {
                    let mut r = layer::HashReader::new(
                        files.open(src).with_context(|| format!("reading {src}"))?,
                    );
                    io::copy(&mut r, &mut io::sink()).with_context(|| format!("reading {src}"))?;
                    digests.push((src.clone(), r.finish().0));
                }
            }
        }
        stats.bytes_read += files.bytes_read;
        if !digests.is_empty() {
            let mut c = write(cache);
            for (src, digest) in digests {
                c.remember_digest(&src, &metas[&src], digest.to_string());
            }
            drop(c);
            key = key_now(&read(cache));
        }
    }
    if let Some(key) = &key
        && let Some(d) = read(cache).lookup(key)
    {
        stats.hits += 1;
        return Ok(d);
    }
    if let Some(pool) = remote {
        let mut ours = || match tar.take() {
            Some(known) => Ok(known),
            None => {
                let mut files = FsContents { bytes_read: 0 };
                let r = layer::tar_digest(entries, mtime, &mut files);
                stats.bytes_read += files.bytes_read;
                r
            }
        };
        if let Some(key) = &key
            && let Some(d) = pool.with(|rc| rc.fetch(key, &read(cache), &mut ours))
        {
            stats.remote_hits += 1;
            return Ok(d);
        }
    }
    stats.misses += 1;
    let total: u64 = entries
        .iter()
        .map(|e| {
            if let EntryKind::File { size, .. } = e.kind {
                size
            } else {
                0
            }
        })
        .sum();
    let bar = (total > 32 << 20 && io::stderr().is_terminal()).then(|| {
        let bar = progress.bar(total, 0, crate::report::BYTES_BAR);
        bar.set_message(format!("{image}: layer {layer_name}"));
        bar
    });
    let mut contents = FsContents { bytes_read: 0 };
    let (digest, (d, file_digests)) = read(cache).put_blob(|file| {
        let w = io::BufWriter::with_capacity(1 << 20, file);
        // A large layer is compressed in blocks on every core (the same
        // bytes for any number of cores).
        let cores = default_jobs();
        let (d, file_digests) = match &bar {
            Some(bar) => layer::encode_on(entries, mtime, &mut contents, bar.wrap_write(w), cores)?,
            None => layer::encode_on(entries, mtime, &mut contents, w, cores)?,
        };
        Ok((d.digest.to_string(), (d, file_digests)))
    })?;
    fault::point(fault::BUILD_LAYER_CACHED);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    debug_assert_eq!(digest, d.digest);
    stats.bytes_read += contents.bytes_read;
    stats.bytes_compressed += d.tar_size;
    {
        let mut c = write(cache);
        for (src, digest) in file_digests {
            c.remember_digest(&src, &metas[&src], digest.to_string());
        }
    }
    // The key can now be computed from the digests just read.
    let key = key_now(&read(cache));
    if let Some(key) = key {
        read(cache).record(&key, &d)?;
        if let Some(pool) = remote {
            pool.with(|rc| rc.store(&key, &d, &read(cache)));
        }
    }
    Ok(d)
}

/// Writes an OCI image layout into a temporary folder next to `layout` and
/// renames it into place, so a failed build never leaves half a layout.
fn write_layout(cache: &Cache, layout: &Path, docs: &oci::ImageDocs) -> Result<()> {
    if let Some(parent) = layout.parent() {
        crate::adapters::cache::sweep_stale(parent);
    }
    let tmp = crate::adapters::cache::temp_path(layout);
    let result = (|| -> Result<()> {
        let blobs = tmp.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        for l in &docs.layers {
            let from = cache.blob_path(&l.digest);
            let to = blobs.join(l.digest.hex());
            if to.exists() {
                continue;
            }
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to)
                    .with_context(|| format!("copying {} into the layout", from.display()))?;
            }
        }
        for blob in [&docs.config, &docs.manifest] {
            fs::write(blobs.join(blob.digest.hex()), &blob.bytes)?;
        }
        fs::write(tmp.join("oci-layout"), oci::OCI_LAYOUT)?;
        fs::write(tmp.join("index.json"), &docs.index.bytes)?;
        // Docker's manifest.json too, so `docker load` reads the layout.
        fs::write(tmp.join(oci::DOCKER_MANIFEST), &docs.docker_manifest.bytes)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("writing the layout {}", layout.display())));
    }
    let old = crate::adapters::cache::temp_path(&layout.with_file_name(format!(
        "{}.old",
        layout.file_name().unwrap_or_default().to_string_lossy()
    )));
    let had_old = fs::rename(layout, &old).is_ok();
    fault::point(fault::BUILD_LAYOUT_SWAPPING);
    if let Err(e) = fs::rename(&tmp, layout) {
        // Another process building the same image in this checkout put the
        // same layout in place first (same inputs, same bytes): keep it.
        if fs::read(layout.join("index.json")).is_ok_and(|i| i == docs.index.bytes) {
            let _ = fs::remove_dir_all(&tmp);
            if had_old {
                let _ = fs::remove_dir_all(&old);
            }
            return Ok(());
        }
        if had_old {
            let _ = fs::rename(&old, layout);
        }
        let _ = fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("moving the new layout into {}", layout.display()));
    }
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Plans and executes in one go.
pub fn build(ws: &Workspace, names: &[String], opts: &BuildOptions) -> Result<BuildReport> {
    let (plan, git) = plan(ws, names, opts)?;
    if let Some(c) = &opts.cancel {
        c.check()?;
    }
    let (images, shared_cache) = execute_shared(ws, &plan, opts)?;
    Ok(BuildReport {
        images,
        shared_cache,
        source: Some(plan.source),
        git,
    })
}
