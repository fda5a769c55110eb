//! File fingerprints from git's index (issue 25, point 7): on a clean
//! tree, every tracked file's content is named by the blob id git already
//! holds, so an image's input key is computed without reading any file.
//!
//! Used only when it is sound: the tree is clean (no modified, staged or
//! untracked file: `git status --porcelain` is empty), and nothing can
//! make the working tree's bytes differ from the blob's (no
//! `.gitattributes` anywhere, which could name filters or line-ending
//! conversions, and `core.autocrlf` unset or false). Otherwise there is
//! no index fingerprint and the build hashes files as before. The
//! reproducible gate's second build never uses these ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// The blob ids of a clean checkout's tracked files.
#[derive(Debug, Clone)]
pub struct GitIndex {
    root: PathBuf,
    /// Path relative to the root (git's `/` separators) -> (mode, blob id).
    entries: BTreeMap<String, (String, String)>,
}

impl GitIndex {
    /// The index of the checkout at `root` when it can stand for the
    /// working tree (see the module's documentation), else `None`.
    pub fn read(root: &Path, tree_dirty: bool) -> Result<Option<GitIndex>> {
        if tree_dirty {
            return Ok(None);
        }
        let sh = Shell::new()?;
        sh.change_dir(root);
        let autocrlf = cmd!(sh, "git config --get core.autocrlf")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        if !matches!(autocrlf.trim(), "" | "false") {
            return Ok(None);
        }
        let listing = cmd!(sh, "git ls-files --stage -z")
            .quiet()
            .read()
            .context("reading git's index (git ls-files --stage)")?;
        let Some(entries) = parse_ls_files(&listing) else {
            return Ok(None);
        };
        if entries
            .keys()
            .any(|p| p == ".gitattributes" || p.ends_with("/.gitattributes"))
        {
            return Ok(None);
        }
        Ok(Some(GitIndex {
            root: root.to_path_buf(),
            entries,
        }))
    }

    /// `git:<mode>:<blob id>` of the tracked file at `path` (absolute, or
    /// relative to the root), `None` when git does not track it.
    pub fn file(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let rel = rel.to_str()?;
        self.entries
            .get(rel)
            .map(|(mode, oid)| format!("git:{mode}:{oid}"))
    }

    /// Every tracked file under the folder `rel` ("" for the whole tree),
    /// as (path, mode, blob id), in path order.
    pub fn under<'a>(&'a self, rel: &'a str) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> {
        self.entries
            .iter()
            .filter(move |(p, _)| {
                rel.is_empty()
                    || p.as_str() == rel
                    || (p.starts_with(rel) && p.as_bytes().get(rel.len()) == Some(&b'/'))
            })
            .map(|(p, (m, o))| (p.as_str(), m.as_str(), o.as_str()))
    }
}

/// `git ls-files --stage -z` lines (`MODE OID STAGE\tPATH\0`) to a map;
/// `None` when any entry is in conflict (a stage other than 0).
fn parse_ls_files(listing: &str) -> Option<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for rec in listing.split('\0').filter(|r| !r.is_empty()) {
        let (meta, path) = rec.split_once('\t')?;
        let mut f = meta.split(' ');
        let (mode, oid, stage) = (f.next()?, f.next()?, f.next()?);
        if stage != "0" {
            return None;
        }
        out.insert(path.to_string(), (mode.to_string(), oid.to_string()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parses_and_conflicts_refuse() {
        let l = "100644 e69de29bb2d1d6434b8b29ae775ad8c2e48c5391 0\ta b.txt\0\
                 100755 0123456789abcdef0123456789abcdef01234567 0\tsrc/x\0";
        let m = parse_ls_files(l).unwrap();
        assert_eq!(m["a b.txt"].1, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(m["src/x"].0, "100755");
        let idx = GitIndex {
            root: PathBuf::from("/w"),
            entries: m,
        };
        assert!(
            idx.file(Path::new("/w/src/x"))
                .unwrap()
                .starts_with("git:100755:")
        );
        assert!(idx.file(Path::new("/w/src/y")).is_none());
        assert_eq!(idx.under("src").count(), 1);
        assert_eq!(idx.under("sr").count(), 0);
        assert_eq!(idx.under("").count(), 2);
        assert!(parse_ls_files("100644 abc 2\tx\0").is_none());
    }
}
