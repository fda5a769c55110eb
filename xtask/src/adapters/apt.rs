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

/// `cargo xtask lock [--check]`: resolves every `[debian]` table against the
/// machine's apt index; writes the lock, or with `check` fails naming every
/// difference from the committed one.
pub fn lock(root: &Path, images: &[ImageSpec], check: bool) -> Result<LockReport> {
    let sh = Shell::new()?;
    let requests = image_requests(images);
    let (arch, suite) = machine_target(&sh)?;
    let index = machine_index(&sh, &arch)?;
    lock_with(root, &requests, &arch, &suite, &index, check)
}

/// What `lock` asks the resolver for, per image with a `[debian]` table.
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

/// `lock --check` for the release's pinned-inputs gate, remembered: when
/// nothing it reads changed since a check that found the lock fresh (the
/// lock's bytes, the images' `[debian]` tables, the machine's architecture
/// and suite, and each apt `Packages` index by path, size and mtime), the
/// answer is the same and the indexes are not read again.
pub fn lock_check_cached(
    root: &Path,
    images: &[ImageSpec],
    cache_dir: &Path,
) -> Result<LockReport> {
    let sh = Shell::new()?;
    let requests = image_requests(images);
    let (arch, suite) = machine_target(&sh)?;
    let mut inputs = format!("{arch}\n{suite}\n{requests:?}\n");
    inputs.push_str(&fs::read_to_string(root.join(LOCK_PATH)).unwrap_or_default());
    for f in index_files(&sh, "Packages", &arch)? {
        let meta = fs::metadata(&f).with_context(|| format!("reading {f}"))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        inputs.push_str(&format!("\n{f} {} {mtime}", meta.len()));
    }
    let marker = cache_dir
        .join("lock-check")
        .join(layer::sha256(inputs.as_bytes()).hex());
    if marker.is_file() {
        return Ok(LockReport {
            path: LOCK_PATH.into(),
            packages: 0,
            changes: Vec::new(),
            written: false,
        });
    }
    let index = machine_index(&sh, &arch)?;
    let report = lock_with(root, &requests, &arch, &suite, &index, true)?;
    if report.changes.is_empty() {
        crate::adapters::cache::write_atomic(&marker, b"fresh\n")?;
    }
    Ok(report)
}

fn lock_with(
    root: &Path,
    requests: &[ImageRequest],
    arch: &str,
    suite: &str,
    index: &Index,
    check: bool,
) -> Result<LockReport> {
    let new = resolve_images(index, arch, suite, requests)?;
    let path = root.join(LOCK_PATH);
    let old = match fs::read_to_string(&path) {
        Ok(text) => Some(parse_lock(&text)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {LOCK_PATH}")),
    };
    let changes = match &old {
        Some(old) => diff_locks(old, &new),
        None => vec![format!("{LOCK_PATH} does not exist")],
    };
    if check {
        if !changes.is_empty() {
            bail!(
                "{LOCK_PATH} does not match the images' [debian] tables and the apt index:\n  {}\nrun cargo xtask lock and commit the result",
                changes.join("\n  ")
            );
        }
        return Ok(LockReport {
            path: LOCK_PATH.into(),
            packages: new.package.len(),
            changes,
            written: false,
        });
    }
    let text = render_lock(&new)?;
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

/// Downloads `pkgs` with one `apt-get download NAME[:ARCH]=VERSION ...` into
/// a temporary folder; returns their bytes in order (unverified).
fn download(debs: &Path, pkgs: &[&LockedPackage]) -> Result<Vec<Vec<u8>>> {
    let tmp = crate::adapters::cache::temp_path(&debs.join("fetch"));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<Vec<Vec<u8>>> {
        let sh = Shell::new()?;
        sh.change_dir(&tmp);
        let specs: Vec<String> = pkgs
            .iter()
            .map(|p| {
                if p.architecture == "all" {
                    format!("{}={}", p.name, p.version)
                } else {
                    format!("{}:{}={}", p.name, p.architecture, p.version)
                }
            })
            .collect();
        // Output is captured: apt's warnings (e.g. about its sandbox user)
        // appear only when the download fails.
        let specs_arg = &specs;
        let out = cmd!(sh, "apt-get download -q {specs_arg...}")
            .quiet()
            .ignore_status()
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "downloading {} through apt failed: {}; run apt-get update, or cargo xtask lock if a version left the archive",
                specs.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
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
