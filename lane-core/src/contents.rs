//! Debian's Contents index (`Contents-<arch>`, the data apt-file searches):
//! which package ships a file. Pure: a query and the index's lines in, the
//! packages out; the xtask apt adapter finds the files apt keeps and streams
//! them in.
//!
//! Each line of the index is `PATH  AREA/SECTION/PACKAGE[,...]`: the path
//! relative to `/` (it may contain spaces), then, after the last run of
//! white space, every package that ships it, each with its section
//! (`libs/zlib1g`, `non-free/libs/foo`). The index is large (about 150 MB
//! decompressed for amd64), so it is read line by line and only the queried
//! paths are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::ops::Bound;

use anyhow::{Context, Result, bail};

/// The files to look up: for each file name, the absolute paths where a
/// package would have to ship it (the loader's search directories joined
/// with the name, or an interpreter's own path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentsQuery {
    /// Path as the index writes it (relative, no leading `/`) -> the names
    /// asked for under that path.
    paths: BTreeMap<Vec<u8>, BTreeSet<String>>,
}

/// Packages that ship each queried file name.
pub type Providers = BTreeMap<String, BTreeSet<String>>;

impl ContentsQuery {
    pub fn new() -> ContentsQuery {
        ContentsQuery::default()
    }

    /// Asks which packages ship `name` at the absolute path `path`.
    pub fn want(&mut self, name: &str, path: &str) {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            return;
        }
        self.paths
            .entry(rel.as_bytes().to_vec())
            .or_default()
            .insert(name.to_string());
    }

    /// The queries of `other` too.
    pub fn extend(&mut self, other: ContentsQuery) {
        for (path, names) in other.paths {
            self.paths.entry(path).or_default().extend(names);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The file names asked for.
    pub fn names(&self) -> BTreeSet<&str> {
        self.paths.values().flatten().map(String::as_str).collect()
    }

    /// Reads one Contents index (`origin` names it in errors) and returns
    /// the packages that ship a queried path, by file name. An input in
    /// which no line has the `PATH PACKAGES` shape is refused: it is not a
    /// Contents index.
    pub fn scan(&self, mut index: impl BufRead, origin: &str) -> Result<Providers> {
        let mut found = Providers::new();
        let mut line = Vec::with_capacity(512);
        let (mut lines, mut parsed) = (0u64, 0u64);
        loop {
            line.clear();
            let n = index
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading the Contents index {origin}"))?;
            if n == 0 {
                break;
            }
            lines += 1;
            if parsed == 0 {
                // Until one line has the index's shape: a blank line or the
                // free-text header of old indexes is skipped.
                if split_line(&line).is_none() {
                    continue;
                }
                parsed += 1;
            }
            // The hot loop (millions of lines): one ordered lookup, no pass
            // over the line's bytes. The queried path that could start this
            // line is the greatest one not above it.
            let Some((path, names)) = self
                .paths
                .range::<[u8], _>((Bound::Unbounded, Bound::Included(line.as_slice())))
                .next_back()
            else {
                continue;
            };
            if !(line.starts_with(path) && matches!(line.get(path.len()), Some(b' ' | b'\t'))) {
                continue;
            }
            let Some((_, packages)) = split_line(&line) else {
                continue;
            };
            for package in packages.split(|&b| b == b',') {
                // AREA/SECTION/PACKAGE: the package is the last part.
                let name = package.rsplit(|&b| b == b'/').next().unwrap_or(package);
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                if name.is_empty() {
                    continue;
                }
                for file in names {
                    found
                        .entry(file.clone())
                        .or_default()
                        .insert(name.to_string());
                }
            }
        }
        if lines > 0 && parsed == 0 {
            bail!(
                "{origin} is not a Debian Contents index: none of its {lines} lines is `PATH SECTION/PACKAGE`; refresh it with apt-get update"
            );
        }
        Ok(found)
    }
}

/// `PATH<white space>PACKAGES` -> (PATH, PACKAGES); `None` for a line
/// without both.
fn split_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = trim_end(line);
    let sep = line.iter().rposition(|&b| b == b' ' || b == b'\t')?;
    let path = trim_end(&line[..sep]);
    let packages = &line[sep + 1..];
    if path.is_empty() || packages.is_empty() {
        return None;
    }
    Some((path, packages))
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
bin/abpoa                                               science/abpoa
lib/x86_64-linux-gnu/libz.so.1                          libs/zlib1g
lib/x86_64-linux-gnu/libz.so.1.2.13                     libs/zlib1g
lib64/ld-linux-x86-64.so.2                              libs/libc6
usr/lib/x86_64-linux-gnu/libfoo.so.2                    libs/libfoo2,non-free/libs/libfoo2-extra
usr/lib/x86_64-linux-gnu/private/libz.so.1              libs/not-on-the-search-path
usr/share/doc/with space/libz.so.1                      doc/spaced
";

    fn query() -> ContentsQuery {
        let mut q = ContentsQuery::new();
        for dir in ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"] {
            q.want("libz.so.1", &format!("{dir}/libz.so.1"));
            q.want("libfoo.so.2", &format!("{dir}/libfoo.so.2"));
            q.want("libnone.so.9", &format!("{dir}/libnone.so.9"));
        }
        q.want("ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2");
        q
    }

    #[test]
    fn only_queried_paths_name_their_packages() {
        let found = query().scan(INDEX.as_bytes(), "test").unwrap();
        let names = |n: &str| -> Vec<&str> {
            found
                .get(n)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        assert_eq!(names("libz.so.1"), ["zlib1g"], "{found:?}");
        assert_eq!(names("libfoo.so.2"), ["libfoo2", "libfoo2-extra"]);
        assert_eq!(names("ld-linux-x86-64.so.2"), ["libc6"]);
        assert!(!found.contains_key("libnone.so.9"));
    }

    #[test]
    fn paths_with_spaces_and_headers_are_read() {
        let mut q = ContentsQuery::new();
        q.want("libz.so.1", "/usr/share/doc/with space/libz.so.1");
        let text = format!("This file maps each file\n\nFILE  LOCATION\n{INDEX}");
        let found = q.scan(text.as_bytes(), "test").unwrap();
        assert_eq!(found["libz.so.1"], BTreeSet::from(["spaced".to_string()]));
    }

    #[test]
    fn an_input_that_is_not_an_index_is_refused() {
        let e = query()
            .scan(&b"garbage\nmore\n"[..], "/x/Contents")
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("/x/Contents is not a Debian Contents index"),
            "{e}"
        );
        assert!(e.contains("apt-get update"), "{e}");
        // An empty index is an index with nothing in it.
        assert!(query().scan(&b""[..], "empty").unwrap().is_empty());
    }
}

/// Hostile Contents indexes (docs/fault-matrix-parsers.md): no panic; a file with no
/// `PATH PACKAGES` line is refused naming it.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated};
    use proptest::prelude::*;

    const SAMPLE: &str = "FILE LOCATION\nusr/lib/x86_64-linux-gnu/libssl.so.3 libs/libssl3,libs/libssl3t64\nusr/bin/python3.11 python/python3.11-minimal\n";
    const ORIGIN: &str = "Contents-amd64.lz4";

    fn check(index: &[u8]) -> Result<(), TestCaseError> {
        let mut q = ContentsQuery::new();
        q.want("libssl.so.3", "usr/lib/x86_64-linux-gnu/libssl.so.3");
        q.want("python3.11", "usr/bin/python3.11");
        if let Err(e) = q.scan(index, ORIGIN) {
            clear_error(&e, ORIGIN)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(hostile::config(512))]
        #[test]
        fn contents_arbitrary_bytes(index in hostile::bytes(1024)) {
            check(&index)?;
        }

        #[test]
        fn contents_mutated(index in mutated(SAMPLE.as_bytes().to_vec())) {
            check(&index)?;
        }
    }
}
