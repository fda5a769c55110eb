//! The content-addressed action cache under `target/lane-cache/`.
//!
//! - `blobs/sha256/<hex>`: layer blobs, named by their digest;
//! - `actions/<hex>.json`: layer cache key -> [`LayerDigests`];
//! - `stat.json`: file fingerprint (device, inode, size, mtime, ctime, mode)
//!   -> content digest, so an unchanged file is never read again. A file
//!   whose fingerprint is unknown (a branch switch, a new clone) is hashed
//!   before its layer is looked up, while the cache holds any layer: only
//!   a layer whose content changed is compressed again.
//!
//! Every write goes to a temporary file in the same folder and is renamed into
//! place: an interrupted build leaves at worst a stray temporary file, never a
//! truncated entry under a final name.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use lane_core::id::Digest;
use lane_core::layer::LayerDigests;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    mode: u32,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            mode: meta.mode(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatEntry {
    fingerprint: Fingerprint,
    digest: String,
}

pub struct Cache {
    dir: PathBuf,
    stat: BTreeMap<String, StatEntry>,
    stat_changed: bool,
    /// Whether the cache held any layer when it was opened.
    holds_layers: bool,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Every temporary path this process named, for [`remove_own_temporaries`].
static TEMPORARIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A temporary path next to `path`, unique within this machine's processes.
pub fn temp_path(path: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    if let Ok(mut all) = TEMPORARIES.lock() {
        all.push(tmp.clone());
    }
    tmp
}

/// Removes every temporary this process named that still exists (an
/// interrupted run's half-written files and folders); returns how many.
pub fn remove_own_temporaries() -> usize {
    let all = match TEMPORARIES.lock() {
        Ok(all) => all.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let mut removed = 0;
    for p in all {
        let gone = if p.is_dir() {
            fs::remove_dir_all(&p).is_ok()
        } else {
            fs::remove_file(&p).is_ok()
        };
        removed += usize::from(gone);
    }
    removed
}

/// Removes what [`temp_path`] named in `dir` for a process that is gone (a
/// run killed before its rename): `.NAME.tmp-PID-N` files and folders whose
/// PID is no longer running. A live process's temporaries are left alone.
pub fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = stale_pid(name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        let _ = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
}

/// The PID in a [`temp_path`] name (`.NAME.tmp-PID-N`).
fn stale_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.flush()?;
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

impl Cache {
    pub fn open(dir: &Path) -> Result<Cache> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::create_dir_all(dir.join("actions"))?;
        // What a killed run left half-written (the Debian and wheel caches
        // share this folder).
        for sub in [
            "",
            "blobs/sha256",
            "actions",
            "images",
            "debs",
            "debian/files",
            "debian/unpacked",
            "wheels",
        ] {
            sweep_stale(&dir.join(sub));
        }
        let stat = match fs::read(dir.join("stat.json")) {
            // A damaged stat file only costs re-reading files: start empty.
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let holds_layers = fs::read_dir(dir.join("actions"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        Ok(Cache {
            dir: dir.to_path_buf(),
            stat,
            stat_changed: false,
            holds_layers,
        })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.blob_path())
    }

    /// The content digest of `path` if its fingerprint is unchanged since it
    /// was last read.
    pub fn known_digest(&self, path: &str, meta: &fs::Metadata) -> Option<String> {
        let e = self.stat.get(path)?;
        (e.fingerprint == Fingerprint::of(meta)).then(|| e.digest.clone())
    }

    pub fn remember_digest(&mut self, path: &str, meta: &fs::Metadata, digest: String) {
        self.stat.insert(
            path.to_string(),
            StatEntry {
                fingerprint: Fingerprint::of(meta),
                digest,
            },
        );
        self.stat_changed = true;
    }

    /// Whether the cache held any layer when it was opened (false on a cold
    /// build: no lookup can hit, so nothing is hashed ahead of compressing).
    pub fn holds_layers(&self) -> bool {
        self.holds_layers
    }

    /// A cached layer for `key`, if its blob is still there with its size.
    pub fn lookup(&self, key: &Digest) -> Option<LayerDigests> {
        let bytes = fs::read(self.action_path(key)).ok()?;
        let d: LayerDigests = serde_json::from_slice(&bytes).ok()?;
        let meta = fs::metadata(self.blob_path(&d.digest)).ok()?;
        (meta.len() == d.size).then_some(d)
    }

    pub fn record(&self, key: &Digest, d: &LayerDigests) -> Result<()> {
        write_atomic(&self.action_path(key), &serde_json::to_vec(d)?)
    }

    /// The manifest digest an earlier build made from the image input key
    /// `key` (`commands::input_keys`), if recorded here.
    pub fn image_digest(&self, key: &Digest) -> Option<Digest> {
        let text = fs::read_to_string(self.image_path(key)).ok()?;
        text.trim().parse().ok()
    }

    /// Records that the image inputs of `key` built `manifest`.
    pub fn record_image(&self, key: &Digest, manifest: &Digest) -> Result<()> {
        fs::create_dir_all(self.dir.join("images"))?;
        write_atomic(&self.image_path(key), manifest.as_str().as_bytes())
    }

    fn image_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("images").join(key.hex())
    }

    fn action_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("actions").join(format!("{}.json", key.hex()))
    }

    /// Streams a new blob into the cache: `write` gets a temporary file and
    /// returns the blob's digest; the file is then renamed to its digest.
    pub fn put_blob<T>(
        &self,
        write: impl FnOnce(&mut fs::File) -> Result<(String, T)>,
    ) -> Result<(String, T)> {
        let tmp = temp_path(&self.dir.join("blobs/sha256/new"));
        let result = (|| {
            let mut f =
                fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let (digest, extra) = write(&mut f)?;
            drop(f);
            fs::rename(&tmp, self.blob_path(&digest.parse()?))?;
            Ok((digest, extra))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn save(&mut self) -> Result<()> {
        if self.stat_changed {
            write_atomic(
                &self.dir.join("stat.json"),
                &serde_json::to_vec(&self.stat)?,
            )?;
            self.stat_changed = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn temporaries_of_dead_processes_are_swept_and_others_kept() {
        assert_eq!(super::stale_pid(".index.json.tmp-123-4"), Some(123));
        assert_eq!(super::stale_pid("index.json"), None);
        assert_eq!(super::stale_pid(".x.tmp-abc-1"), None);
        let dir = std::env::temp_dir().join(format!("sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = super::temp_path(&dir.join("a"));
        std::fs::write(&mine, b"live").unwrap();
        // Above the kernel's PID limit (4194304): no process has it.
        let dead = dir.join(".b.tmp-999999999-0");
        std::fs::create_dir_all(dead.join("blobs")).unwrap();
        std::fs::write(dir.join("c"), b"kept").unwrap();
        super::sweep_stale(&dir);
        assert!(mine.exists() && dir.join("c").exists());
        assert!(!dead.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
