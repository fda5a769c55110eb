//! Python wheels through the machine's own pip configuration: `cargo xtask
//! lock` asks `pip download` for the best wheel of each requirement (no
//! dependencies, binary only, for the image's Python and platform, never
//! the build machine's); builds fetch each locked wheel with its hash
//! required (`--require-hashes`), verify size and sha256 against
//! `lockfiles/python.lock` before opening it, cache it by digest under
//! `target/lane-cache/wheels/`, and install it in Rust
//! (`lane_core::python::wheel`). No index host is ever written.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use xshell::{Shell, cmd};

use lane_core::layer::{self, Entry, EntryKind};
use lane_core::python::lock::{self, ImageRequest, LOCK_PATH, LockedWheel, PyLock, WheelSource};
use lane_core::python::version::Version;
use lane_core::python::wheel::{self, InstallScheme};
use lane_core::spec::{ImagePath, ImageSpec, Owner};

/// The Python an image runs, read from its locked Debian packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PyTarget {
    /// `3.11`
    pub version: String,
    /// `3.11.2`
    pub full_version: String,
    /// `x86_64`
    pub machine: String,
    /// `manylinux_2_36_x86_64` (from the image's glibc)
    pub platform: String,
    /// `/usr/bin/python3.11`
    pub interpreter: String,
}

impl PyTarget {
    /// pip's `--platform` values: every manylinux the image's glibc runs.
    fn platforms(&self) -> Vec<String> {
        let m = &self.machine;
        let glibc: u32 = self
            .platform
            .strip_prefix("manylinux_2_")
            .and_then(|r| r.split('_').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(17);
        let mut out: Vec<String> = (5..=glibc)
            .rev()
            .map(|n| format!("manylinux_2_{n}_{m}"))
            .collect();
        for (legacy, min) in [
            ("manylinux2014", 17),
            ("manylinux2010", 12),
            ("manylinux1", 5),
        ] {
            if glibc >= min {
                out.push(format!("{legacy}_{m}"));
            }
        }
        out
    }

    fn abi(&self) -> String {
        format!("cp{}", self.version.replace('.', ""))
    }
}

/// Reads the image's interpreter version and glibc from the Debian lock of
/// the image and its workspace bases.
pub fn target(root: &Path, images: &[ImageSpec], spec: &ImageSpec) -> Result<PyTarget> {
    let mut chain = vec![spec.clone()];
    for b in crate::adapters::apt::workspace_bases(images, spec) {
        if let Some(s) = images.iter().find(|s| s.name == b) {
            chain.push(s.clone());
        }
    }
    let mut python = None;
    let mut glibc = None;
    let mut arch = None;
    for s in &chain {
        for p in crate::adapters::apt::locked_packages(root, s)? {
            let upstream = |v: &str| {
                let v = v.split_once(':').map_or(v, |(_, r)| r);
                v.split('-').next().unwrap_or(v).to_string()
            };
            if let Some(rest) = p.name.strip_prefix("python3.")
                && let Some(minor) = rest.strip_suffix("-minimal")
                && minor.bytes().all(|b| b.is_ascii_digit())
            {
                python = Some((format!("3.{minor}"), upstream(&p.version)));
                arch = Some(p.architecture.clone());
            }
            if p.name == "libc6" {
                glibc = upstream(&p.version)
                    .split('.')
                    .nth(1)
                    .and_then(|n| n.parse::<u32>().ok());
            }
        }
    }
    let at = spec
        .python
        .as_ref()
        .map_or(spec.dir.clone(), |p| p.at.clone());
    let Some((version, full_version)) = python else {
        bail!(
            "{at}: image {} has a [python] table but no Python interpreter from Debian: add python3.X-minimal and libpython3.X-stdlib to the [debian] packages of the image or of its workspace base, then run cargo xtask lock",
            spec.name
        );
    };
    let machine = match arch.as_deref() {
        Some("amd64") => "x86_64",
        Some("arm64") => "aarch64",
        other => bail!("{at}: no wheel platform is known for Debian architecture {other:?}"),
    }
    .to_string();
    let glibc = glibc.with_context(|| {
        format!(
            "{at}: image {} has no libc6 in its Debian packages; wheels need the image's glibc",
            spec.name
        )
    })?;
    Ok(PyTarget {
        interpreter: format!("/usr/bin/python{version}"),
        platform: format!("manylinux_2_{glibc}_{machine}"),
        version,
        full_version,
        machine,
    })
}

/// `pip download` through the machine's configuration, one wheel at a time.
struct Pip<'a> {
    target: &'a PyTarget,
    cache: PathBuf,
}

fn pip_args(t: &PyTarget) -> Vec<String> {
    let mut args: Vec<String> = [
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(t.version.clone());
    for abi in [t.abi(), "abi3".into(), "none".into()] {
        args.push("--abi".into());
        args.push(abi);
    }
    for p in t.platforms() {
        args.push("--platform".into());
        args.push(p);
    }
    args
}

/// Runs pip into a fresh temporary folder; returns the one wheel it left.
fn download(cache: &Path, t: &PyTarget, extra: &[String]) -> Result<(String, Vec<u8>)> {
    let tmp = crate::adapters::cache::temp_path(&cache.join("fetch"));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<(String, Vec<u8>)> {
        let sh = Shell::new()?;
        let args = pip_args(t);
        let out = cmd!(sh, "python3 {args...} -d {tmp} {extra...}")
            .quiet()
            .ignore_status()
            .output()
            .context("running python3 -m pip download (install python3 with pip)")?;
        if !out.status.success() {
            bail!(
                "pip download {} failed: {}; check the name and version, pip's configuration and the network",
                extra.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut wheels: Vec<PathBuf> = fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        wheels.sort();
        let [one] = wheels.as_slice() else {
            bail!(
                "pip download {} left {} wheels, expected one",
                extra.join(" "),
                wheels.len()
            );
        };
        let name = one
            .file_name()
            .and_then(|n| n.to_str())
            .context("wheel file name is not UTF-8")?
            .to_string();
        Ok((name, fs::read(one)?))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

impl WheelSource for Pip<'_> {
    fn best(&mut self, requirement: &str) -> Result<(String, Vec<u8>)> {
        let (name, bytes) = download(&self.cache, self.target, &[requirement.to_string()])?;
        // Keep it: the build will ask for exactly these bytes.
        let path = self
            .cache
            .join(format!("{}.whl", lane_core::id::Digest::of(&bytes).hex()));
        if !path.exists() {
            crate::adapters::cache::write_atomic(&path, &bytes)?;
        }
        Ok((name, bytes))
    }
}

/// A locked wheel whose version the machine's pip index no longer offers
/// as the newest: a report of what the index offers today, never a verdict.
#[derive(Debug, Clone, Serialize)]
pub struct PyOutdated {
    pub name: String,
    pub locked: String,
    /// The newest version the index offers for the images' interpreter and
    /// platform (`None`: none at all).
    pub available: Option<String>,
    /// The index no longer lists the locked version (yanked, or removed).
    pub withdrawn: bool,
    /// The locked version is still served, but marked yanked (pip says so
    /// when asked for it by name).
    pub yanked: bool,
}

/// `cargo xtask lock --outdated` for `lockfiles/python.lock`: each locked
/// wheel for which pip's index (the machine's configuration) offers a
/// newer version, or no longer lists the locked one (then whether it is
/// yanked or gone), for the images' interpreter and wheel platform.
pub fn outdated(root: &Path, images: &[ImageSpec]) -> Result<Vec<PyOutdated>> {
    let Some(lock) = read_lock(root)? else {
        return Ok(Vec::new());
    };
    let (_, target_of) = requests(root, images)?;
    let Some(t) = target_of.values().next() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for w in &lock.wheel {
        let offered = index_versions(t, &w.name)?;
        let locked = Version::parse(&w.version)?;
        let newest = offered.iter().filter_map(|v| Version::parse(v).ok()).max();
        let withdrawn = !offered
            .iter()
            .filter_map(|v| Version::parse(v).ok())
            .any(|v| v == locked);
        let newer = newest.as_ref().is_some_and(|n| *n > locked);
        if !newer && !withdrawn {
            continue;
        }
        let yanked = withdrawn && yanked(t, w)?;
        out.push(PyOutdated {
            name: w.name.clone(),
            locked: w.version.clone(),
            available: newest.map(|v| v.text),
            withdrawn,
            yanked,
        });
    }
    Ok(out)
}

/// The versions `pip index versions` lists for `name` (yanked ones left
/// out, as pip does), for the target's interpreter and platform; empty
/// when the index has none.
fn index_versions(t: &PyTarget, name: &str) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    let mut args = vec![
        "-m".to_string(),
        "pip".into(),
        "index".into(),
        "versions".into(),
        name.into(),
    ];
    // The download options after `download`: the same target.
    // (`--quiet` would silence the listing itself.)
    args.extend(
        pip_args(t)
            .into_iter()
            .skip(3)
            .filter(|a| a != "--no-deps" && a != "--quiet"),
    );
    let out = cmd!(sh, "python3 {args...}")
        .quiet()
        .ignore_status()
        .output()
        .context("running python3 -m pip index versions (install python3 with pip)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No matching distribution") {
            return Ok(Vec::new());
        }
        bail!("pip index versions {name} failed: {}", err.trim());
    }
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Available versions:"))
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default())
}

/// Whether pip, asked for exactly the locked file, fetches it with its
/// warning that it is yanked.
fn yanked(t: &PyTarget, w: &LockedWheel) -> Result<bool> {
    let dir = tempfile_dir()?;
    let sh = Shell::new()?;
    let args = pip_args(t);
    let spec = format!("{}=={}", w.name, w.version);
    let out = cmd!(sh, "python3 {args...} -d {dir} {spec}")
        .quiet()
        .ignore_status()
        .output()
        .context("running python3 -m pip download")?;
    let _ = fs::remove_dir_all(&dir);
    Ok(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("yanked"))
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = crate::adapters::cache::temp_path(&std::env::temp_dir().join("lane-pip-yanked"));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub path: String,
    pub wheels: usize,
    pub changes: Vec<String>,
    pub written: bool,
}

fn read_lock(root: &Path) -> Result<Option<PyLock>> {
    match fs::read_to_string(root.join(LOCK_PATH)) {
        Ok(text) => Ok(Some(lock::parse(&text)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {LOCK_PATH}")),
    }
}

/// What the resolver is asked for each image with a `[python]` table, with
/// the Python target of each (from the Debian lock).
fn requests(
    root: &Path,
    images: &[ImageSpec],
) -> Result<(Vec<ImageRequest>, BTreeMap<String, PyTarget>)> {
    let mut requests = Vec::new();
    let mut target_of = BTreeMap::new();
    for spec in images.iter().filter(|i| i.python.is_some()) {
        let t = target(root, images, spec)?;
        requests.push(ImageRequest {
            name: spec.name.clone(),
            python: t.full_version.clone(),
            requirements: spec
                .python
                .as_ref()
                .map(|p| p.requirements.clone())
                .unwrap_or_default(),
        });
        target_of.insert(spec.name.clone(), t);
    }
    Ok((requests, target_of))
}

fn empty_lock() -> PyLock {
    PyLock {
        version: 1,
        platform: String::new(),
        image: Vec::new(),
        wheel: Vec::new(),
    }
}

/// `cargo xtask lock` for the `[python]` tables (run after the Debian lock,
/// which gives each image's Python): asks pip for the best wheel of each
/// requirement and its closure, and writes the lock. `None` when no image
/// has wheels and there is no Python lock.
pub fn lock(root: &Path, cache_dir: &Path, images: &[ImageSpec]) -> Result<Option<LockReport>> {
    let old = read_lock(root)?;
    let (requests, target_of) = requests(root, images)?;
    if requests.is_empty() && old.is_none() {
        return Ok(None);
    }
    let new = match target_of.values().next() {
        Some(t) => {
            let mut src = Pip {
                target: t,
                cache: cache_dir.join("wheels"),
            };
            lock::resolve(&requests, &t.platform, &t.machine, &mut src)?
        }
        None => empty_lock(),
    };
    let changes = match &old {
        Some(old) => lock::diff(old, &new),
        None => vec![format!("{LOCK_PATH} does not exist")],
    };
    let text = lock::render(&new)?;
    let path = root.join(LOCK_PATH);
    let written = fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if written {
        crate::adapters::cache::write_atomic(&path, text.as_bytes())?;
    }
    Ok(Some(LockReport {
        path: LOCK_PATH.into(),
        wheels: new.wheel.len(),
        changes,
        written,
    }))
}

/// `cargo xtask lock --check` and the pinned-inputs gate for the
/// `[python]` tables: whether the committed lock satisfies them on its own
/// (`lane_core::python::lock::unsatisfied`: every requirement locked, every
/// applicable `Requires-Dist` of a locked wheel met inside the lock), read
/// from the locked wheels, fetched with their hash required and verified.
/// pip's index is not asked what it offers today. `None` when no image has
/// wheels and there is no Python lock.
pub fn check(root: &Path, cache_dir: &Path, images: &[ImageSpec]) -> Result<Option<LockReport>> {
    let old = read_lock(root)?;
    let (requests, target_of) = requests(root, images)?;
    let report = |wheels, changes| {
        Some(LockReport {
            path: LOCK_PATH.into(),
            wheels,
            changes,
            written: false,
        })
    };
    let Some(old) = old else {
        if requests.is_empty() {
            return Ok(None);
        }
        return Ok(report(
            0,
            vec![format!(
                "{LOCK_PATH} does not exist; run cargo xtask lock and commit it"
            )],
        ));
    };
    let Some(t) = target_of.values().next() else {
        return Ok(report(old.wheel.len(), lock::diff(&old, &empty_lock())));
    };
    let mut changes = Vec::new();
    if old.platform != t.platform {
        changes.push(format!(
            "{LOCK_PATH} is for wheel platform {}, the images' Debian packages give {}; run cargo xtask lock",
            old.platform, t.platform
        ));
    }
    changes.extend(lock::unsatisfied(&old, &requests, &t.machine, |w| {
        fetch_verified(cache_dir, t, std::slice::from_ref(w))
            .map(|mut all| all.pop().unwrap_or_default())
    }));
    Ok(report(old.wheel.len(), changes))
}

/// The locked wheels of an image, checking the lock still matches its
/// `[python]` table.
pub fn locked_wheels(root: &Path, spec: &ImageSpec) -> Result<Vec<LockedWheel>> {
    let Some(py) = &spec.python else {
        return Ok(Vec::new());
    };
    if py.requirements.is_empty() {
        return Ok(Vec::new());
    }
    let lock = read_lock(root)?.with_context(|| {
        format!("{}: image {} has [python] requirements but {LOCK_PATH} does not exist; run cargo xtask lock", py.at, spec.name)
    })?;
    let img = lock.image(&spec.name);
    lane_core::lockfile::check_image(
        LOCK_PATH,
        &py.at.to_string(),
        &spec.name,
        "python",
        img.map(|img| [("requirements", &py.requirements[..], &img.requirements[..])])
            .as_ref()
            .map(|l| &l[..]),
    )?;
    Ok(lock
        .wheels_of(&spec.name)
        .unwrap_or_default()
        .into_iter()
        .cloned()
        .collect())
}

/// Every locked distribution that installs `top` (any image): the lock's
/// candidates for a module nothing in an image provides.
pub fn candidates(root: &Path) -> Result<PyLock> {
    Ok(read_lock(root)?.unwrap_or(PyLock {
        version: 1,
        platform: String::new(),
        image: Vec::new(),
        wheel: Vec::new(),
    }))
}

/// The lock's sha256 of a wheel, parsed by the one digest parser.
pub fn locked_digest(w: &LockedWheel) -> Result<lane_core::id::Digest> {
    w.sha256.parse().with_context(|| {
        format!(
            "{LOCK_PATH}: wheel {} has an invalid sha256 {:?}; run cargo xtask lock",
            w.filename, w.sha256
        )
    })
}

/// The bytes of each locked wheel, from `cache_dir/wheels/<hex>.whl` or
/// fetched through pip with the hash required; each is verified against
/// the lock before anything opens it.
pub fn fetch_verified(
    cache_dir: &Path,
    t: &PyTarget,
    wheels: &[LockedWheel],
) -> Result<Vec<Vec<u8>>> {
    let dir = cache_dir.join("wheels");
    let mut out = Vec::new();
    for w in wheels {
        let digest = locked_digest(w)?;
        let cached = dir.join(format!("{}.whl", digest.hex()));
        if let Ok(bytes) = fs::read(&cached) {
            lock::verify(w, &bytes, &format!("cached copy {}", cached.display()))?;
            out.push(bytes);
            continue;
        }
        // pip checks the hash itself (--require-hashes); we check again.
        let reqs = crate::adapters::cache::temp_path(&dir.join("requirements.txt"));
        fs::create_dir_all(&dir)?;
        fs::write(
            &reqs,
            format!("{}=={} --hash=sha256:{}\n", w.name, w.version, digest.hex()),
        )?;
        let got = download(
            &dir,
            t,
            &[
                "--require-hashes".into(),
                "-r".into(),
                reqs.to_string_lossy().into_owned(),
            ],
        );
        let _ = fs::remove_file(&reqs);
        let (name, bytes) = got.map_err(|e| {
            anyhow::anyhow!(
                "the locked wheel {} ({} {}, sha256 {}) could not be fetched: pip's index does not serve it (any more), or pip cannot reach it ({e:#}).\nWays out: run cargo xtask lock to pin what the index offers now and commit {LOCK_PATH}; or point pip (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS) at an index or folder that still holds this file. Nothing was built",
                w.filename,
                w.name,
                w.version,
                digest.hex()
            )
        })?;
        if name != w.filename {
            bail!(
                "pip returned {name} for {} {}, the lock names {}; run cargo xtask lock",
                w.name,
                w.version,
                w.filename
            );
        }
        lock::verify(w, &bytes, "download through pip")?;
        crate::adapters::cache::write_atomic(&cached, &bytes)?;
        out.push(bytes);
    }
    Ok(out)
}

/// The wheels layer of an image: every locked wheel verified, then read and
/// installed in memory (nothing is written before all of them pass);
/// contents go to `cache_dir/python/files/<hex>`.
pub fn layer_entries(
    root: &Path,
    cache_dir: &Path,
    images: &[ImageSpec],
    spec: &ImageSpec,
) -> Result<Vec<Entry>> {
    let wheels = locked_wheels(root, spec)?;
    if wheels.is_empty() {
        return Ok(Vec::new());
    }
    let t = target(root, images, spec)?;
    let bytes = fetch_verified(cache_dir, &t, &wheels)?;
    let scheme = InstallScheme::debian_local(&t.version);
    let mut installed: BTreeMap<ImagePath, (String, wheel::InstalledFile)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (w, b) in wheels.iter().zip(&bytes) {
        let parsed = wheel::read(&w.filename, b)?;
        for f in wheel::install(&parsed, &scheme)? {
            if let Some((other, _)) = installed.get(&f.path) {
                conflicts.push(format!(
                    "{} is installed by both {other} and {}",
                    f.path, w.filename
                ));
                continue;
            }
            installed.insert(f.path.clone(), (w.filename.clone(), f));
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "image {}: wheels conflict:\n  {}",
            spec.name,
            conflicts.join("\n  ")
        );
    }
    let files = cache_dir.join("python/files");
    fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let mut entries = Vec::new();
    for (path, (_, f)) in installed {
        let digest = layer::sha256(&f.data);
        let stored = files.join(digest.hex());
        if !stored.exists() {
            crate::adapters::cache::write_atomic(&stored, &f.data)?;
        }
        entries.push(Entry {
            path,
            kind: EntryKind::File {
                source: stored.to_string_lossy().into_owned(),
                size: f.data.len() as u64,
            },
            mode: f.mode,
            owner: Owner::ROOT,
        });
    }
    layer::normalise(entries)
        .with_context(|| format!("image {}: the Python wheels layer", spec.name))
}
