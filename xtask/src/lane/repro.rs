//! The reproducibility check (`cargo xtask repro`, the release's
//! reproducible gate): build twice under varied conditions, compare digests.
//!
//! Each run works in a folder of its own, `target/repro/.run.tmp-PID-N/`,
//! removed at the end unless the builds differ.
//! The second build, the independent one, runs from a copy of the source
//! tree at another path (`copy/`: files created 0600 or 0700, folders 0700,
//! as under umask 077, with shuffled mtimes) into `second/`, with an empty
//! cache, an empty cargo target dir, cargo under umask 077 and no shared
//! cache. It runs in the background ([`SecondBuild`]) while the first
//! build runs: `repro` builds the first from the checkout into `first/`,
//! also from empty caches; `release` compares it with its own candidate.
//! On a mismatch the report names the image, the layer and the first
//! differing file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::adapters::workspace::{Cancel, Workspace};
use crate::lane::build::{self, BuildOptions};
use lane_core::distribution::BuiltImage;
use lane_core::layer::{HashReader, sha256};
use lane_core::oci::SourceFacts;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReproReport {
    pub reproducible: bool,
    pub images: Vec<ReproImage>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReproImage {
    pub name: String,
    pub first: String,
    pub second: String,
    pub equal: bool,
    /// What differs, when the digests differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<String>,
}

/// The umask of the independent build's copy and of its cargo.
const UMASK: u32 = 0o077;

fn options(dir: &Path, quiet: bool) -> BuildOptions {
    BuildOptions {
        images_dir: dir.join("images"),
        cache_dir: dir.join("cache"),
        cargo_target_dir: dir.join("cargo"),
        source: None,
        quiet,
        // An independent rebuild: never from a shared cache.
        shared_cache: None,
        jobs: crate::lane::build::default_jobs(),
        cargo_umask: None,
        cancel: None,
        index_keys: false,
    }
}

/// The independent second build, running in a thread of its own.
pub struct SecondBuild {
    work: PathBuf,
    handle: Option<JoinHandle<Result<Vec<BuiltImage>>>>,
    cancel: Cancel,
    /// Builds only some of the first build's images (and their bases):
    /// the others are not compared.
    restricted: bool,
}

impl SecondBuild {
    /// Starts the second build of `names` in the background, from a copy of
    /// the checkout, with `source` (the copy is not a git checkout: it gets
    /// the first build's source facts). Its folder is
    /// `target/repro/.run.tmp-PID-N`: two runs in one checkout at once never
    /// share it, and a killed run's folder is swept by the next run.
    pub fn start(ws: &Workspace, names: &[String], source: &SourceFacts) -> SecondBuild {
        let base = ws.root.join("target/repro");
        crate::adapters::cache::sweep_stale(&base);
        let work = crate::adapters::cache::temp_path(&base.join("run"));
        let (ws, names, source, dir) = (ws.clone(), names.to_vec(), source.clone(), work.clone());
        let cancel = Cancel::default();
        let stop = cancel.clone();
        let handle = std::thread::spawn(move || second_build(&ws, &names, &source, &dir, &stop));
        SecondBuild {
            work,
            handle: Some(handle),
            cancel,
            restricted: false,
        }
    }

    /// [`SecondBuild::start`] of only `names` (with their workspace
    /// bases): [`SecondBuild::compare`] then compares the images it built
    /// and leaves the others out.
    pub fn start_only(ws: &Workspace, names: &[String], source: &SourceFacts) -> SecondBuild {
        let mut second = SecondBuild::start(ws, names, source);
        second.restricted = true;
        second
    }

    /// Tells the second build to stop at its next step and returns at
    /// once: dropping it later waits for it and removes its folder (a
    /// download already running finishes meanwhile, while the caller goes
    /// on).
    pub fn stop(self) -> SecondBuild {
        self.cancel.cancel();
        self
    }

    /// The run's folder (the first build of `repro` goes in `first/`).
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// Waits for the second build and compares it with `first`. The folder
    /// is removed unless the builds differ (kept for inspection).
    pub fn compare(mut self, first: &[BuiltImage]) -> Result<ReproReport> {
        let second = self.wait();
        let restricted = self.restricted;
        let report = second.and_then(|second| {
            let compared: Vec<BuiltImage> = first
                .iter()
                .filter(|a| !restricted || second.iter().any(|b| b.name == a.name))
                .cloned()
                .collect();
            compare(&compared, &second)
        });
        if report.as_ref().is_ok_and(|r| !r.reproducible) {
            self.work = PathBuf::new(); // kept
        }
        report
    }

    fn wait(&mut self) -> Result<Vec<BuiltImage>> {
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the second build's thread panicked"))?,
            None => bail!("the second build was already taken"),
        }
    }
}

impl Drop for SecondBuild {
    /// Abandoned (the first build failed) or compared: the thread is
    /// waited for, and the folder removed unless kept.
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.wait();
        }
        if !self.work.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.work);
        }
    }
}

/// The copy and the build from it, in `work/copy` and `work/second`.
fn second_build(
    ws: &Workspace,
    names: &[String],
    source: &SourceFacts,
    work: &Path,
    cancel: &Cancel,
) -> Result<Vec<BuiltImage>> {
    let copy = work.join("copy");
    copy_tree(&ws.root, &copy, cancel)?;
    cancel.check()?;
    let copy_ws = Workspace {
        root: copy.canonicalize()?,
    };
    let mut opts = options(&work.join("second"), true);
    opts.source = Some(source.clone());
    opts.cargo_umask = Some(UMASK);
    opts.cancel = Some(cancel.clone());
    Cancel::scope(Some(cancel), || build::build(&copy_ws, names, &opts))
        .map(|r| r.images)
        .context("the second build (from a copy of the source tree)")
}

pub fn repro(ws: &Workspace, names: &[String], quiet: bool) -> Result<ReproReport> {
    let progress = crate::report::Reporter::new(quiet);
    let (source, _) = crate::adapters::workspace::source_facts(ws)?;
    let second = SecondBuild::start(ws, names, &source);
    progress.say(format_args!(
        "repro: second build in the background, from a copy at {} (umask 077, shuffled mtimes)",
        second.work().join("copy").display()
    ));
    progress.say("repro: first build, from the checkout");
    let mut first_opts = options(&second.work().join("first"), quiet);
    first_opts.source = Some(source);
    let first = build::build(ws, names, &first_opts)?;
    progress.say("repro: waiting for the second build");
    second.compare(&first.images)
}

/// Compares two builds image by image (by name).
pub fn compare(first: &[BuiltImage], second: &[BuiltImage]) -> Result<ReproReport> {
    let mut images = Vec::new();
    for a in first {
        let b = second
            .iter()
            .find(|b| b.name == a.name)
            .with_context(|| format!("the second build produced no image {}", a.name))?;
        let equal = a.manifest_digest == b.manifest_digest;
        let difference = if equal { None } else { Some(explain(a, b)?) };
        images.push(ReproImage {
            name: a.name.clone(),
            first: a.manifest_digest.to_string(),
            second: b.manifest_digest.to_string(),
            equal,
            difference,
        });
    }
    Ok(ReproReport {
        reproducible: images.iter().all(|i| i.equal),
        images,
    })
}

/// Copies the files git knows of (tracked and untracked-but-not-ignored),
/// creating them fresh as under umask 077 (files 0600 or 0700, folders
/// 0700), without changing the process's umask, and giving each a
/// different mtime.
fn copy_tree(root: &Path, dest: &Path, cancel: &Cancel) -> Result<()> {
    // Folders are made below `dest` only: if `dest` is gone (the run was
    // interrupted and its temporaries removed), the copy stops instead of
    // making the removed folder again.
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mkdir = |dir: &Path| -> Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            if d == dest {
                bail!("{} was removed: the copy stops", dest.display());
            }
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.iter().rev() {
            fs::create_dir(m).with_context(|| format!("creating {}", m.display()))?;
            fs::set_permissions(m, fs::Permissions::from_mode(0o777 & !UMASK))?;
        }
        Ok(())
    };
    for (i, rel) in crate::adapters::workspace::source_files(root)?
        .iter()
        .enumerate()
    {
        if i % 64 == 0 {
            cancel.check()?;
        }
        let from = root.join(rel);
        let Ok(meta) = fs::symlink_metadata(&from) else {
            continue;
        }; // deleted in the work tree
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            mkdir(parent)?;
        }
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let exec = meta.permissions().mode() & 0o100 != 0;
        let mode = if exec { 0o777 } else { 0o666 } & !UMASK;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&to)
            .with_context(|| format!("creating {}", to.display()))?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
        std::io::copy(&mut fs::File::open(&from)?, &mut out)?;
        // A spread of mtimes unrelated to the originals (and to each other).
        let shuffled = 1_000_000_000 + (i as u64).wrapping_mul(2_654_435_761) % 700_000_000;
        out.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(shuffled))?;
    }
    Ok(())
}

/// Names the first difference between two builds of one image.
fn explain(a: &BuiltImage, b: &BuiltImage) -> Result<String> {
    let name = &a.name;
    if a.layers.len() != b.layers.len() {
        return Ok(format!(
            "image {name}: {} layers in the first build, {} in the second",
            a.layers.len(),
            b.layers.len()
        ));
    }
    for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        if la.digest == lb.digest {
            continue;
        }
        let ea = layer_files(&a.layout, la.digest.as_str())?;
        let eb = layer_files(&b.layout, lb.digest.as_str())?;
        let what = first_difference(&ea, &eb).unwrap_or_else(|| {
            "same files and metadata; the archive bytes differ (encoder)".into()
        });
        return Ok(format!(
            "image {name}: layer {} of {} differs ({} vs {}): {what}",
            i + 1,
            a.layers.len(),
            la.digest,
            lb.digest
        ));
    }
    if a.config_digest != b.config_digest {
        let ca: serde_json::Value =
            serde_json::from_slice(&fs::read(blob(&a.layout, a.config_digest.as_str())?)?)?;
        let cb: serde_json::Value =
            serde_json::from_slice(&fs::read(blob(&b.layout, b.config_digest.as_str())?)?)?;
        let key = json_difference("", &ca, &cb).unwrap_or_default();
        return Ok(format!(
            "image {name}: the layers are equal but the config differs at {key}"
        ));
    }
    Ok(format!(
        "image {name}: layers and config are equal but the manifests differ (annotations)"
    ))
}

fn blob(layout: &Path, digest: &str) -> Result<PathBuf> {
    Ok(crate::adapters::layout::Layout::at("", layout).blob_path(&digest.parse()?))
}

/// Path -> "type mode uid:gid mtime size content" for each entry of a layer.
fn layer_files(layout: &Path, digest: &str) -> Result<Vec<(String, String)>> {
    let f =
        fs::File::open(blob(layout, digest)?).with_context(|| format!("opening layer {digest}"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let h = entry.header().clone();
        let link = entry
            .link_name()?
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut hashed = HashReader::new(&mut entry);
        std::io::copy(&mut hashed, &mut std::io::sink())?;
        let (content, _) = hashed.finish();
        out.push((
            path,
            format!(
                "type={:?} mode={:o} owner={}:{} mtime={} size={} link={link:?} content={content}",
                h.entry_type(),
                h.mode()?,
                h.uid()?,
                h.gid()?,
                h.mtime()?,
                h.size()?
            ),
        ));
    }
    Ok(out)
}

fn first_difference(a: &[(String, String)], b: &[(String, String)]) -> Option<String> {
    let mb: BTreeMap<&str, &str> = b.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    let ma: BTreeMap<&str, &str> = a.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    for (path, sa) in a {
        match mb.get(path.as_str()) {
            None => {
                return Some(format!(
                    "first differing file /{path}: only in the first build"
                ));
            }
            Some(sb) if sb != sa => {
                let fields: Vec<String> = sa
                    .split(' ')
                    .zip(sb.split(' '))
                    .filter(|(x, y)| x != y)
                    .map(|(x, y)| format!("{x} vs {}", y.split_once('=').map_or(y, |(_, v)| v)))
                    .collect();
                return Some(format!(
                    "first differing file /{path}: {}",
                    fields.join(", ")
                ));
            }
            Some(_) => {}
        }
    }
    b.iter()
        .find(|(p, _)| !ma.contains_key(p.as_str()))
        .map(|(p, _)| format!("first differing file /{p}: only in the second build"))
        .or_else(|| {
            let order_a: Vec<&str> = a.iter().map(|(p, _)| p.as_str()).collect();
            let order_b: Vec<&str> = b.iter().map(|(p, _)| p.as_str()).collect();
            (order_a != order_b).then(|| "the same files in another order".to_string())
        })
}

fn json_difference(at: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => {
                        if let Some(d) = json_difference(&format!("{at}.{k}"), va, vb) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{at}.{k}")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{at}.{k}"))
        }
        _ if a == b => None,
        _ => Some(format!("{at} ({a} vs {b})")),
    }
}

/// Fails with the report's differences when the builds differ.
pub fn check(report: &ReproReport) -> Result<()> {
    if report.reproducible {
        return Ok(());
    }
    let lines: Vec<String> = report
        .images
        .iter()
        .filter_map(|i| i.difference.clone())
        .collect();
    bail!("the build is not reproducible:\n  {}", lines.join("\n  "))
}

/// Digest of a whole layout's files, for tests comparing two layouts.
pub fn layout_fingerprint(layout: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(layout).sort_by_file_name() {
        let e = e?;
        if e.file_type().is_file() {
            let mut bytes = Vec::new();
            fs::File::open(e.path())?.read_to_end(&mut bytes)?;
            out.insert(
                e.path()
                    .strip_prefix(layout)?
                    .to_string_lossy()
                    .into_owned(),
                sha256(&bytes).to_string(),
            );
        }
    }
    Ok(out)
}
