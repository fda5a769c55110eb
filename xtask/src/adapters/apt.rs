//! Debian packages through the machine's own apt: its indexes (for
//! `cargo xtask lock`), `apt-get download` into the action cache, and the
//! unpack cache. Every .deb is verified against the lock
//! (`lane_core::debian::verify`) before it is opened; no mirror host is ever
//! written. The rules (deb822, versions, resolution, the lock format, .deb
//! reading) are pure and live in `lane_core::debian`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use xshell::{Shell, cmd};

use lane_core::contents::{ContentsQuery, Providers};
use lane_core::debian::*;
use lane_core::layer::{self, Entry, EntryKind};
use lane_core::security_age::SecurityUpdate;
use lane_core::spec::{ImagePath, ImageSpec, Owner};

/// The machine's architecture (`dpkg --print-architecture`) and suite
/// (`VERSION_CODENAME` of /etc/os-release).
pub fn machine_target(sh: &Shell) -> Result<(String, String)> {
    let arch = cmd!(sh, "dpkg --print-architecture")
        .read()
        .context("asking dpkg for the machine's architecture")?;
    let os = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let suite = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .context("/etc/os-release has no VERSION_CODENAME; this lane needs a Debian machine")?;
    Ok((arch.trim().to_string(), suite))
}

/// The index files of one kind (`Packages`, `Contents-deb`) for `arch` that
/// apt keeps on this machine (`apt-get indextargets`; a target whose file
/// was never downloaded is left out).
fn index_files(sh: &Shell, identifier: &str, arch: &str) -> Result<Vec<String>> {
    let format = "$(FILENAME)";
    let identifier = format!("Identifier: {identifier}");
    let architecture = format!("Architecture: {arch}");
    let files = cmd!(
        sh,
        "apt-get indextargets --format {format} {identifier} {architecture}"
    )
    .quiet()
    .read()
    .context("asking apt for its indexes (apt-get indextargets)")?;
    Ok(files
        .lines()
        .map(str::trim)
        .filter(|f| !f.is_empty() && Path::new(f).is_file())
        .map(str::to_string)
        .collect())
}

/// The machine's apt `Packages` indexes for `arch`, parsed.
pub fn machine_index(sh: &Shell, arch: &str) -> Result<Index> {
    let files = index_files(sh, "Packages", arch)?;
    if files.is_empty() {
        bail!("apt has no package index for {arch} on this machine; run apt-get update");
    }
    let mut stanzas = Vec::new();
    for f in files {
        let text = cmd!(sh, "/usr/lib/apt/apt-helper cat-file {f}")
            .quiet()
            .read()
            .with_context(|| format!("reading the apt index {f}"))?;
        stanzas.extend(parse_stanzas(&text).with_context(|| format!("parsing the apt index {f}"))?);
    }
    Index::from_stanzas(&stanzas, arch)
}

/// A locked package the machine's apt index has a newer version of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outdated {
    pub name: String,
    pub locked: String,
    pub available: String,
    /// The codename of the suite that offers it (`bookworm-security`).
    pub suite: String,
    /// Whether that suite is a security suite (Debian's security updates).
    pub security: bool,
}

/// `cargo xtask lock --outdated`: each package of the committed lock for
/// which one of the machine's apt `Packages` indexes offers a higher
/// version, with the suite that offers the highest and whether it is a
/// security suite (its codename ends in `-security` or its label says
/// Security). A report of what the index offers today, never a verdict.
pub fn outdated(root: &Path) -> Result<Vec<Outdated>> {
    match read_lock(root)? {
        Some((_, lock)) => outdated_of(&lock),
        None => Ok(Vec::new()),
    }
}

/// [`outdated`] for a lock already read.
fn outdated_of(lock: &Lock) -> Result<Vec<Outdated>> {
    let sh = Shell::new()?;
    let format = "$(FILENAME)\t$(CODENAME)\t$(LABEL)";
    let identifier = "Identifier: Packages".to_string();
    let architecture = format!("Architecture: {}", lock.architecture);
    let targets = cmd!(
        sh,
        "apt-get indextargets --format {format} {identifier} {architecture}"
    )
    .quiet()
    .read()
    .context("asking apt for its indexes (apt-get indextargets)")?;
    let mut best: BTreeMap<&str, (String, String, bool)> = BTreeMap::new();
    for line in targets.lines() {
        let mut cols = line.split('\t');
        let (Some(file), codename, label) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        if !Path::new(file).is_file() {
            continue;
        }
        let codename = codename.unwrap_or("").to_string();
        let security = codename.ends_with("-security") || label.unwrap_or("").contains("Security");
        let text = cmd!(sh, "/usr/lib/apt/apt-helper cat-file {file}")
            .quiet()
            .read()
            .with_context(|| format!("reading the apt index {file}"))?;
        let index = Index::from_stanzas(
            &parse_stanzas(&text).with_context(|| format!("parsing the apt index {file}"))?,
            &lock.architecture,
        )?;
        for p in &lock.package {
            let Some(c) = index.packages.get(&p.name) else {
                continue;
            };
            let higher = best
                .get(p.name.as_str())
                .map_or(p.version.as_str(), |(v, _, _)| v.as_str());
            if version_cmp(&c.deb.version, higher) == std::cmp::Ordering::Greater {
                best.insert(&p.name, (c.deb.version.clone(), codename.clone(), security));
            }
        }
    }
    Ok(lock
        .package
        .iter()
        .filter_map(|p| {
            let (available, suite, security) = best.get(p.name.as_str())?.clone();
            Some(Outdated {
                name: p.name.clone(),
                locked: p.version.clone(),
                available,
                suite,
                security,
            })
        })
        .collect())
}

/// The security updates [`outdated`] finds, each with its build date read
/// from the update's own `.deb` (downloaded through the machine's apt,
/// which checks it against the signed index, into a temporary folder that
/// is removed afterwards): the facts of the opt-in `security-updates` gate
/// (`lane_core::security_age`). An update apt cannot download has an
/// unknown date, which that gate counts as too old.
pub fn security_updates(root: &Path) -> Result<Vec<SecurityUpdate>> {
    let Some((_, lock)) = read_lock(root)? else {
        return Ok(Vec::new());
    };
    let offered: Vec<Outdated> = outdated_of(&lock)?
        .into_iter()
        .filter(|o| o.security)
        .collect();
    if offered.is_empty() {
        return Ok(Vec::new());
    }
    let tmp = crate::adapters::cache::temp_path(&root.join("target/lane-cache/security-updates"));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<Vec<SecurityUpdate>> {
        let mut out = Vec::new();
        for o in offered {
            let arch = lock
                .package
                .iter()
                .find(|p| p.name == o.name)
                .map_or(lock.architecture.as_str(), |p| p.architecture.as_str());
            let spec = apt_spec_of(&o.name, arch, &o.available);
            let built_at = match apt_download(&tmp, std::slice::from_ref(&spec))? {
                Err(why) => Err(format!("apt could not download {spec}: {why}")),
                Ok(()) => build_time_of_downloaded(&tmp, &o.name),
            };
            out.push(SecurityUpdate {
                name: o.name,
                locked: o.locked,
                available: o.available,
                suite: o.suite,
                built_at,
            });
        }
        Ok(out)
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// The build date of the one `NAME_*.deb` apt just downloaded into `dir`
/// (removed after reading its first bytes).
fn build_time_of_downloaded(dir: &Path, name: &str) -> std::result::Result<i64, String> {
    let prefix = format!("{name}_");
    let file = fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| format!("apt reported {name} downloaded, but no {prefix}*.deb is there"))?;
    // The ar signature and the first member's header.
    let mut head = Vec::new();
    let read = fs::File::open(&file)
        .and_then(|f| io::Read::read_to_end(&mut io::Read::take(f, 68), &mut head))
        .map_err(|e| format!("reading {}: {e}", file.display()));
    let _ = fs::remove_file(&file);
    read?;
    lane_core::security_age::deb_build_time(&head)
        .ok_or_else(|| format!("{} is not a .deb (no ar header)", file.display()))
}

/// Which packages ship the queried files, from Debian's Contents index as
/// apt keeps it: the `Contents-deb` targets of `arch` and of `all` that apt-file's
/// configuration makes `apt-get update` download (`apt-get indextargets`
/// finds them, `apt-helper cat-file` decompresses them). Each file is
/// streamed through [`ContentsQuery::scan`]; only the queried paths are
/// kept. `None` when apt keeps no Contents index for `arch` (apt-file not
/// installed, `apt-get update` not run since, or no apt at all).
pub fn contents_providers(arch: &str, query: &ContentsQuery) -> Result<Option<Providers>> {
    let sh = Shell::new()?;
    // No apt at all is the same as no Contents index: nothing can be named.
    // Architecture-independent packages (Python modules, scripts) are in
    // the `all` index, next to the architecture's own.
    let mut files = index_files(&sh, "Contents-deb", arch).unwrap_or_default();
    if arch != "all" {
        files.extend(index_files(&sh, "Contents-deb", "all").unwrap_or_default());
    }
    if files.is_empty() {
        return Ok(None);
    }
    let mut found = Providers::new();
    for f in files {
        let mut child = std::process::Command::new("/usr/lib/apt/apt-helper")
            .args(["cat-file", f.as_str()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running /usr/lib/apt/apt-helper cat-file {f}"))?;
        let stdout = child
            .stdout
            .take()
            .context("apt-helper cat-file has no standard output")?;
        let scanned = query.scan(io::BufReader::with_capacity(1 << 20, stdout), &f);
        if scanned.is_err() {
            let _ = child.kill();
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for apt-helper cat-file {f}"))?;
        let answer = scanned?;
        if !out.status.success() {
            bail!(
                "reading Debian's Contents index {f} failed ({}: {}); refresh it with apt-get update",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for (name, packages) in answer {
            found.entry(name).or_default().extend(packages);
        }
    }
    Ok(Some(found))
}

#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub path: String,
    pub packages: usize,
    /// Differences from the committed lock (empty when up to date).
    pub changes: Vec<String>,
    pub written: bool,
}

/// `cargo xtask lock`: resolves every `[debian]` table against the
/// machine's apt index and writes the lock (the changes are listed).
pub fn lock(root: &Path, images: &[ImageSpec]) -> Result<LockReport> {
    let sh = Shell::new()?;
    let requests = image_requests(images);
    let (arch, suite) = machine_target(&sh)?;
    let index = machine_index(&sh, &arch)?;
    let new = resolve_images(&index, &arch, &suite, &requests)?;
    let changes = match read_lock(root)? {
        Some((_, old)) => diff_locks(&old, &new),
        None => vec![format!("{LOCK_PATH} does not exist")],
    };
    let text = render_lock(&new)?;
    let path = root.join(LOCK_PATH);
    let written = fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if written {
        crate::adapters::cache::write_atomic(&path, text.as_bytes())?;
    }
    Ok(LockReport {
        path: LOCK_PATH.into(),
        packages: new.package.len(),
        changes,
        written,
    })
}

/// The committed lock: its bytes and its contents; `None` when absent.
fn read_lock(root: &Path) -> Result<Option<(String, Lock)>> {
    match fs::read_to_string(root.join(LOCK_PATH)) {
        Ok(text) => {
            let lock = parse_lock(&text)?;
            Ok(Some((text, lock)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {LOCK_PATH}")),
    }
}

/// What one image asks the resolver for, per image with a `[debian]` table.
fn image_requests(images: &[ImageSpec]) -> Vec<ImageRequest> {
    images
        .iter()
        .filter_map(|i| {
            let d = i.debian.as_ref()?;
            Some(ImageRequest {
                name: i.name.clone(),
                packages: d.packages.clone(),
                exclude: d.exclude.clone(),
                bases: workspace_bases(images, i),
            })
        })
        .collect()
}

/// Bump when the rules of [`check`] change: remembered answers are ignored.
const CHECK_FORMAT: u32 = 2;

/// `cargo xtask lock --check` and the release's pinned-inputs gate: whether
/// the committed lock satisfies the images' `[debian]` tables on its own
/// (`lane_core::debian::unsatisfied`): every requested package locked, the
/// locked set closed under Pre-Depends and Depends, judged from the lock
/// and the `control` of each .deb, fetched and verified against the lock's
/// size and sha256. What the apt index offers today is not asked (that is
/// `lock --outdated`). `changes` lists every problem (empty: satisfied).
///
/// The answer is a function of the lock's bytes, the `[debian]` tables and
/// the build's architecture, so a satisfied answer is remembered under
/// their digest and not worked out again.
pub fn check(root: &Path, images: &[ImageSpec], cache_dir: &Path) -> Result<LockReport> {
    let requests = image_requests(images);
    let report = |packages, changes| LockReport {
        path: LOCK_PATH.into(),
        packages,
        changes,
        written: false,
    };
    let Some((text, lock)) = read_lock(root)? else {
        if requests.is_empty() {
            return Ok(report(0, Vec::new()));
        }
        return Ok(report(
            0,
            vec![format!(
                "{LOCK_PATH} does not exist; run cargo xtask lock and commit it"
            )],
        ));
    };
    let (arch, _) = machine_target(&Shell::new()?)?;
    let inputs = format!("{CHECK_FORMAT}\n{arch}\n{requests:?}\n{text}");
    let marker = cache_dir
        .join("lock-check")
        .join(layer::sha256(inputs.as_bytes()).hex());
    if marker.is_file() {
        return Ok(report(lock.package.len(), Vec::new()));
    }
    let controls = locked_controls(cache_dir, &lock.package)?;
    let changes = unsatisfied(&lock, &arch, &requests, &controls);
    if changes.is_empty() {
        crate::adapters::cache::write_atomic(&marker, b"satisfied\n")?;
    }
    Ok(report(lock.package.len(), changes))
}

/// The `control` file of each package's .deb (fetched and verified against
/// the lock first; read from the unpack cache the build fills too).
fn locked_controls(cache_dir: &Path, pkgs: &[LockedPackage]) -> Result<Vec<String>> {
    let bytes = fetch_verified(cache_dir, pkgs)?;
    let mut out = Vec::new();
    for (p, b) in pkgs.iter().zip(&bytes) {
        let status = format!("var/lib/dpkg/status.d/{}", p.name);
        let entries = unpack_cached(cache_dir, p, b)?;
        let source = entries
            .iter()
            .find(|e| e.path.as_str() == status)
            .and_then(|e| match &e.kind {
                EntryKind::File { source, .. } => Some(source.clone()),
                _ => None,
            })
            .with_context(|| format!("package {} {}: no control file", p.name, p.version))?;
        out.push(fs::read_to_string(&source).with_context(|| format!("reading {source}"))?);
    }
    Ok(out)
}

/// The workspace base images of `spec` that have a `[debian]` table,
/// nearest first.
pub fn workspace_bases(images: &[ImageSpec], spec: &ImageSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = spec;
    while let lane_core::spec::BaseRef::Workspace { image } = &cur.base {
        let Some(next) = images.iter().find(|s| &s.name == image) else {
            break;
        };
        if next.name == spec.name || out.contains(&next.name) {
            break;
        }
        if next.debian.is_some() {
            out.push(next.name.clone());
        }
        cur = next;
    }
    out
}

/// Reads the committed lock and returns an image's locked packages, checking
/// that the lock still matches the image's `[debian]` table.
pub fn locked_packages(root: &Path, spec: &ImageSpec) -> Result<Vec<LockedPackage>> {
    let Some(deb) = &spec.debian else {
        return Ok(Vec::new());
    };
    let text = fs::read_to_string(root.join(LOCK_PATH)).with_context(|| {
        format!("{}: image {} has a [debian] table but {LOCK_PATH} cannot be read; run cargo xtask lock", deb.at, spec.name)
    })?;
    let lock = parse_lock(&text)?;
    let img = lock.image.iter().find(|i| i.name == spec.name);
    lane_core::lockfile::check_image(
        LOCK_PATH,
        &deb.at.to_string(),
        &spec.name,
        "debian",
        img.map(|img| {
            [
                ("exclude entries", &deb.exclude[..], &img.exclude[..]),
                ("packages", &deb.packages[..], &img.packages[..]),
            ]
        })
        .as_ref()
        .map(|l| &l[..]),
    )?;
    Ok(lock
        .packages_of(&spec.name)
        .unwrap_or_default()
        .into_iter()
        .cloned()
        .collect())
}

/// The .debs of `pkgs`, from `cache_dir/debs/<hex>.deb` or downloaded
/// through the machine's apt (one `apt-get download` for all missing ones).
/// Each one's size and sha256 are checked against the lock before anything
/// reads it as an archive; the first mismatch is an error.
pub fn fetch_verified(cache_dir: &Path, pkgs: &[LockedPackage]) -> Result<Vec<Vec<u8>>> {
    let debs = cache_dir.join("debs");
    let mut found: Vec<Option<Vec<u8>>> = Vec::new();
    let mut missing = Vec::new();
    for (i, pkg) in pkgs.iter().enumerate() {
        let cached = cached_path(&debs, pkg)?;
        match fs::read(&cached) {
            Ok(bytes) => {
                verify(pkg, &bytes, &format!("cached copy {}", cached.display()))?;
                found.push(Some(bytes));
            }
            Err(_) => {
                found.push(None);
                missing.push(i);
            }
        }
    }
    if !missing.is_empty() {
        let wanted: Vec<&LockedPackage> = missing.iter().map(|&i| &pkgs[i]).collect();
        let downloaded = download(&debs, &wanted)?;
        for (&i, bytes) in missing.iter().zip(downloaded) {
            verify(&pkgs[i], &bytes, "download through apt")?;
            crate::adapters::cache::write_atomic(&cached_path(&debs, &pkgs[i])?, &bytes)?;
            found[i] = Some(bytes);
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// The lock's sha256 of a package, parsed by the one digest parser.
pub fn locked_digest(pkg: &LockedPackage) -> Result<lane_core::id::Digest> {
    pkg.sha256.parse().with_context(|| {
        format!(
            "{LOCK_PATH}: package {} has an invalid sha256 {:?}; run cargo xtask lock",
            pkg.name, pkg.sha256
        )
    })
}

fn cached_path(debs: &Path, pkg: &LockedPackage) -> Result<PathBuf> {
    Ok(debs.join(format!("{}.deb", locked_digest(pkg)?.hex())))
}

/// `NAME[:ARCH]=VERSION`, as `apt-get download` takes a package.
fn apt_spec(p: &LockedPackage) -> String {
    apt_spec_of(&p.name, &p.architecture, &p.version)
}

/// `NAME=VERSION` for architecture `all`, else `NAME:ARCH=VERSION`.
fn apt_spec_of(name: &str, arch: &str, version: &str) -> String {
    if arch == "all" {
        format!("{name}={version}")
    } else {
        format!("{name}:{arch}={version}")
    }
}

/// Runs `apt-get download SPECS...` in `dir`; `Err(apt's message)`.
fn apt_download(dir: &Path, specs: &[String]) -> Result<std::result::Result<(), String>> {
    let sh = Shell::new()?;
    sh.change_dir(dir);
    // Output is captured: apt's warnings (e.g. about its sandbox user)
    // appear only when the download fails.
    // Killed with the work it serves when that is cancelled (the
    // reproducible gate's second build, no longer needed).
    let out = crate::adapters::workspace::output_cancellable(
        cmd!(sh, "apt-get download -q {specs...}").quiet().into(),
    )
    .context("running apt-get download")?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    })
}

/// Downloads `pkgs` with one `apt-get download NAME[:ARCH]=VERSION ...` into
/// a temporary folder; returns their bytes in order (unverified). When
/// apt cannot fetch them all, each is tried alone so the error names every
/// pinned package the machine's apt sources no longer serve (with version
/// and sha256) and the ways out; the folder is removed either way, so
/// nothing half-fetched is left.
fn download(debs: &Path, pkgs: &[&LockedPackage]) -> Result<Vec<Vec<u8>>> {
    let tmp = crate::adapters::cache::temp_path(&debs.join("fetch"));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<Vec<Vec<u8>>> {
        let specs: Vec<String> = pkgs.iter().map(|p| apt_spec(p)).collect();
        if let Err(first) = apt_download(&tmp, &specs)? {
            let mut lacking = Vec::new();
            let mut said = first;
            for p in pkgs {
                if let Err(e) = apt_download(&tmp, &[apt_spec(p)])? {
                    lacking.push(format!(
                        "{} {} ({}, {})",
                        p.name, p.version, p.filename, p.sha256
                    ));
                    said = e;
                }
            }
            if lacking.is_empty() {
                bail!(
                    "downloading {} through apt failed: {said}; run apt-get update",
                    specs.join(" ")
                );
            }
            bail!(
                "the machine's apt sources do not serve {} pinned in {LOCK_PATH}:\n  {}\napt said: {said}\nnothing was built. Either re-lock to versions the archive serves now (cargo xtask lock, then commit lockfiles/), or point the machine's apt at a snapshot of the archive that still holds them (apt sources: a snapshot mirror of the date the lock was written), then apt-get update",
                if lacking.len() == 1 {
                    "a package"
                } else {
                    "packages"
                },
                lacking.join("\n  ")
            );
        }
        let mut all = Vec::new();
        for p in pkgs {
            // apt's file name: NAME_VERSION_ARCH.deb, ':' escaped as %3a.
            let name = format!(
                "{}_{}_{}.deb",
                p.name,
                p.version.replace(':', "%3a"),
                p.architecture
            );
            let bytes = fs::read(tmp.join(&name)).with_context(|| {
                format!(
                    "apt-get download left no {name} for package {} {}",
                    p.name, p.version
                )
            })?;
            all.push(bytes);
        }
        Ok(all)
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// The `[debian]` layer of `spec`: every locked package's files plus
/// `/var/lib/dpkg/status.d/<package>`. File contents are stored under
/// `cache_dir/debian/files/<hex>` and the entries point at them.
pub fn layer_entries(root: &Path, cache_dir: &Path, spec: &ImageSpec) -> Result<Vec<Entry>> {
    let packages = locked_packages(root, spec)?;
    // Verify every package before opening any: a mismatch builds nothing.
    let bytes = fetch_verified(cache_dir, &packages)?;
    let mut owners: BTreeMap<ImagePath, (&str, bool)> = BTreeMap::new();
    let mut entries = Vec::new();
    let mut conflicts = Vec::new();
    for (p, bytes) in packages.iter().zip(&bytes) {
        for e in unpack_cached(cache_dir, p, bytes)? {
            let is_dir = e.kind == EntryKind::Dir;
            if let Some((other, other_dir)) = owners.get(&e.path) {
                if !(is_dir && *other_dir) {
                    conflicts.push(format!(
                        "{} is shipped by both {other} and {}",
                        e.path, p.name
                    ));
                }
                continue;
            }
            owners.insert(e.path.clone(), (&p.name, is_dir));
            entries.push(e);
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "image {}: Debian packages conflict:\n  {}",
            spec.name,
            conflicts.join("\n  ")
        );
    }
    layer::normalise(entries)
        .with_context(|| format!("image {}: the Debian package layer", spec.name))
}

/// Bump when [`read_deb`]'s rules change: old unpack records are ignored.
const UNPACK_FORMAT: u32 = 2;

/// What unpacking one verified .deb gave, kept in
/// `cache_dir/debian/unpacked/<deb hex>.json` so a warm build does not
/// decompress it again. File contents live in `cache_dir/debian/files/<hex>`.
#[derive(Serialize, Deserialize)]
struct UnpackRecord {
    format: u32,
    entries: Vec<RecordEntry>,
}

#[derive(Serialize, Deserialize)]
struct RecordEntry {
    path: String,
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    /// Symlink target, or content file name (sha256 hex) of a file.
    #[serde(default)]
    data: String,
    #[serde(default)]
    size: u64,
}

/// The entries of one verified package (its files plus its status file),
/// with file sources pointing into the content-addressed file store.
fn unpack_cached(cache_dir: &Path, pkg: &LockedPackage, bytes: &[u8]) -> Result<Vec<Entry>> {
    let files = cache_dir.join("debian/files");
    let record_path = cache_dir.join(format!(
        "debian/unpacked/{}.json",
        locked_digest(pkg)?.hex()
    ));
    if let Some(entries) = fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<UnpackRecord>(&b).ok())
        .filter(|r| r.format == UNPACK_FORMAT)
        .and_then(|r| from_record(&files, r))
    {
        return Ok(entries);
    }
    let deb = read_deb(&pkg.name, bytes)?;
    fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let mut status = deb.control.trim_end().to_string();
    status.push('\n');
    let status_path = ImagePath::parse(&format!("/var/lib/dpkg/status.d/{}", pkg.name))
        .map_err(|e| anyhow::anyhow!("package name {:?}: {e}", pkg.name))?;
    // The package's file list next to its status (dpkg's `info/PKG.list`
    // format: one absolute path per line), so `drift` can tell which package
    // provides each file.
    let mut list: Vec<String> = deb.entries.iter().map(|e| e.path.to_string()).collect();
    list.sort();
    let list_path = ImagePath::parse(&format!("/var/lib/dpkg/status.d/{}.list", pkg.name))
        .map_err(|e| anyhow::anyhow!("package name {:?}: {e}", pkg.name))?;
    let extra = [
        DebEntry {
            path: status_path,
            kind: DebKind::File(status.into_bytes()),
            mode: 0o644,
            owner: Owner::ROOT,
        },
        DebEntry {
            path: list_path,
            kind: DebKind::File(format!("{}\n", list.join("\n")).into_bytes()),
            mode: 0o644,
            owner: Owner::ROOT,
        },
    ];
    let mut record = UnpackRecord {
        format: UNPACK_FORMAT,
        entries: Vec::new(),
    };
    for e in deb.entries.into_iter().chain(extra) {
        let (kind, data, size) = match e.kind {
            DebKind::Dir => ("dir", String::new(), 0),
            DebKind::Symlink(target) => ("symlink", target, 0),
            DebKind::File(bytes) => {
                let digest = layer::sha256(&bytes);
                let hex = digest.hex().to_string();
                let path = files.join(&hex);
                if !path.exists() {
                    crate::adapters::cache::write_atomic(&path, &bytes)?;
                }
                ("file", hex, bytes.len() as u64)
            }
        };
        record.entries.push(RecordEntry {
            path: e.path.as_str().to_string(),
            kind: kind.to_string(),
            mode: e.mode,
            uid: e.owner.uid,
            gid: e.owner.gid,
            data,
            size,
        });
    }
    crate::adapters::cache::write_atomic(&record_path, &serde_json::to_vec(&record)?)?;
    from_record(&files, record).with_context(|| {
        format!(
            "package {}: reading back {}",
            pkg.name,
            record_path.display()
        )
    })
}

/// Entries of a record; `None` when it is damaged or a content file is gone
/// (the package is then unpacked again).
fn from_record(files: &Path, r: UnpackRecord) -> Option<Vec<Entry>> {
    r.entries
        .into_iter()
        .map(|e| {
            let kind = match e.kind.as_str() {
                "dir" => EntryKind::Dir,
                "symlink" => EntryKind::Symlink { target: e.data },
                "file" => {
                    let path = files.join(&e.data);
                    if fs::metadata(&path).ok()?.len() != e.size {
                        return None;
                    }
                    EntryKind::File {
                        source: path.to_string_lossy().into_owned(),
                        size: e.size,
                    }
                }
                _ => return None,
            };
            Some(Entry {
                path: ImagePath::parse(&format!("/{}", e.path)).ok()?,
                kind,
                mode: e.mode,
                owner: Owner {
                    uid: e.uid,
                    gid: e.gid,
                },
            })
        })
        .collect()
}

/// What `build --dry-run` shows for the `[debian]` layer: one line per
/// locked package (status file path, archive path and digest).
pub fn planned(root: &Path, spec: &ImageSpec) -> Result<Vec<(String, String)>> {
    Ok(locked_packages(root, spec)?
        .into_iter()
        .map(|p| {
            (
                format!("/var/lib/dpkg/status.d/{}", p.name),
                format!("{} {} {}", p.filename, p.size, p.sha256),
            )
        })
        .collect())
}
