//! Base images from pinned Debian packages: `cargo xtask lock` and the
//! `[debian]` layer of an image.
//!
//! The pure core (values in, values out):
//! - [`parse_stanzas`] reads deb822 text (apt `Packages` indexes, `control`);
//! - [`version_cmp`] is dpkg's version ordering;
//! - [`Index`] keeps, per package name, the highest version of the target
//!   architecture (or `all`) found in all indexes;
//! - [`resolve`] computes each requested package's Depends + Pre-Depends
//!   closure into a [`Lock`]; [`render_lock`]/[`parse_lock`] are its file
//!   format and [`diff_locks`] names what changed;
//! - [`read_deb`] reads an untrusted `.deb` (bytes in) into sanitised entries.
//!
//! The adapters ([`machine_index`], [`lock`], [`fetch_verified`],
//! [`layer_entries`]) ask the machine's apt for its indexes and for package
//! downloads, so no mirror host name is ever written into the repository.
//!
//! # Resolution rules
//! - Every requested package must exist as a real package.
//! - A dependency group `a (>= 1) | b` is satisfied by its first alternative
//!   that can be: a real package of that name whose (highest) version meets
//!   the constraint, else a package that `Provides` it (with a matching
//!   version when the dependency is versioned). Among several providers the
//!   one with the most important `Priority` wins (required, important,
//!   standard, optional, extra), then the lowest name: deterministic and
//!   close to what apt picks (`awk` -> `mawk`).
//! - Version constraints are checked, not ignored: a dependency no candidate
//!   meets is an error naming both packages.
//! - `:any`/`:native` qualifiers are dropped (one architecture only).
//! - Implicit dependencies on `Essential: yes` packages are not added (they
//!   are undeclared by policy); list them explicitly when an image needs them.
//!
//! # Untrusted archives
//! `.deb` files are checked against the lock (size and sha256) before they
//! are opened. Their contents are still treated as hostile:
//! - paths are normalised: a leading `/` or `./` is dropped (dpkg installs
//!   relative to the root too), empty and `.` components are removed;
//! - a `..` component anywhere in a path: the package is refused;
//! - symlinks are kept verbatim (absolute targets stay absolute: the runtime
//!   resolves them inside the container's root), but a target that climbs
//!   above the root when resolved lexically from the link's folder is refused;
//! - hard links become a regular-file copy of the earlier regular file they
//!   name in the same archive (layers stay simple; the link is lost, the
//!   bytes are identical); a hard link to anything else is refused;
//! - device nodes, FIFOs and other special files are refused (the container
//!   runtime provides `/dev`);
//! - a path twice in one archive is refused unless both are directories;
//!   across packages, directories merge (the first package in name order
//!   decides mode and owner) and any other shared path is refused naming both
//!   packages; a path below a symlink is refused by [`layer::normalise`];
//! - non-UTF-8 paths are refused; more than [`MAX_UNPACKED`] bytes of content
//!   per package is refused;
//! - maintainer scripts (`preinst`, `postinst`, ...) are never run: only the
//!   `control` file of `control.tar` is read. Files such scripts would create
//!   (e.g. `/etc/ssl/certs/ca-certificates.crt`) are therefore absent.
//!
//! The lane never unpacks an archive onto the file system: entries become tar
//! headers of a new layer and file contents are stored under their own sha256
//! in the cache, so no entry can make the lane write outside its cache.
//! Every problem of a package is reported, not only the first.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::layer::{self};
use crate::spec::{ImagePath, Owner};

/// The lockfile, relative to the workspace root.
pub const LOCK_PATH: &str = "lockfiles/debian.lock";

/// Most bytes one package's `data.tar` may decompress to, and most bytes of
/// file content its entries may hold (a hard link counts its target's bytes
/// again: the lane copies them).
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Most bytes one package's `control.tar` may decompress to.
pub const MAX_CONTROL_UNPACKED: u64 = 64 << 20;

/// Most entries one `data.tar` (or `control.tar`) may hold. Debian's
/// largest packages have some tens of thousands of files.
pub const MAX_ENTRIES: usize = 500_000;

/// Most members a `.deb`'s ar archive may have (a .deb has three).
pub const MAX_AR_MEMBERS: usize = 16;

/// The caps [`read_deb`] applies; tests use smaller ones.
#[derive(Debug, Clone, Copy)]
struct DebLimits {
    control: u64,
    unpacked: u64,
    entries: usize,
    members: usize,
}

const DEB_LIMITS: DebLimits = DebLimits {
    control: MAX_CONTROL_UNPACKED,
    unpacked: MAX_UNPACKED,
    entries: MAX_ENTRIES,
    members: MAX_AR_MEMBERS,
};

// ---------------------------------------------------------------------------
// deb822

/// One paragraph of a deb822 file: fields in their original order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of a field (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses deb822 text: `Field: value` lines, continuation lines starting
/// with a space or tab, paragraphs separated by blank lines.
pub fn parse_stanzas(text: &str) -> Result<Vec<Stanza>> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            let Some((_, v)) = cur.fields.last_mut() else {
                bail!("line {}: continuation line without a field", n + 1);
            };
            v.push('\n');
            v.push_str(line);
        } else {
            let Some((k, v)) = line.split_once(':') else {
                bail!("line {}: expected \"Field: value\", got {line:?}", n + 1);
            };
            cur.fields
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Versions

/// dpkg's version comparison (`[epoch:]upstream[-revision]`).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|b| b.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        let (up, rev) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, up, rev)
    }
    fn order(c: u8) -> i32 {
        match c {
            0 => 0,
            b'~' => -1,
            c if c.is_ascii_digit() => 0,
            c if c.is_ascii_alphabetic() => c as i32,
            c => c as i32 + 256,
        }
    }
    fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
        let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit())
            {
                let (ac, bc) = (order(at(a, i)), order(at(b, j)));
                if ac != bc {
                    return ac.cmp(&bc);
                }
                i += 1;
                j += 1;
            }
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            let mut first_diff = Ordering::Equal;
            while at(a, i).is_ascii_digit() && at(b, j).is_ascii_digit() {
                if first_diff == Ordering::Equal {
                    first_diff = at(a, i).cmp(&at(b, j));
                }
                i += 1;
                j += 1;
            }
            if at(a, i).is_ascii_digit() {
                return Ordering::Greater;
            }
            if at(b, j).is_ascii_digit() {
                return Ordering::Less;
            }
            if first_diff != Ordering::Equal {
                return first_diff;
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| verrevcmp(ra.as_bytes(), rb.as_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub op: String,
    pub version: String,
}

impl Constraint {
    pub fn allows(&self, v: &str) -> bool {
        let o = version_cmp(v, &self.version);
        match self.op.as_str() {
            "<<" => o == Ordering::Less,
            "<=" | "<" => o != Ordering::Greater,
            "=" => o == Ordering::Equal,
            ">=" | ">" => o != Ordering::Less,
            ">>" => o == Ordering::Greater,
            _ => false,
        }
    }
}

/// One alternative of a dependency: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub name: String,
    pub constraint: Option<Constraint>,
}

impl std::fmt::Display for Dep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            Some(c) => write!(f, "{} ({} {})", self.name, c.op, c.version),
            None => f.write_str(&self.name),
        }
    }
}

/// Parses a `Depends`-style field into groups of alternatives.
pub fn parse_deps(field: &str) -> Result<Vec<Vec<Dep>>> {
    let mut groups = Vec::new();
    for group in field.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alts = Vec::new();
        for alt in group.split('|').map(str::trim) {
            let (name, rest) = match alt.find([' ', '(', '[', '<']) {
                Some(i) => (&alt[..i], alt[i..].trim()),
                None => (alt, ""),
            };
            let name = name.split(':').next().unwrap_or(name).to_string();
            if name.is_empty() {
                bail!("dependency {alt:?} has no package name");
            }
            let constraint = match rest.strip_prefix('(') {
                Some(c) => {
                    let c = c.split(')').next().unwrap_or("").trim();
                    let i = c
                        .find(|ch: char| !"<=>".contains(ch))
                        .with_context(|| format!("dependency {alt:?} has no version"))?;
                    Some(Constraint {
                        op: c[..i].to_string(),
                        version: c[i..].trim().to_string(),
                    })
                }
                None => None,
            };
            alts.push(Dep { name, constraint });
        }
        groups.push(alts);
    }
    Ok(groups)
}

// ---------------------------------------------------------------------------
// Index and resolution

/// One installable package of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// What the lock records of it (`required_by` empty: resolution fills it).
    pub deb: LockedPackage,
    pub priority: String,
    /// Pre-Depends then Depends.
    pub depends: Vec<Vec<Dep>>,
    pub provides: Vec<Dep>,
}

/// The packages apt knows for one architecture: the highest version of each.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub packages: BTreeMap<String, Candidate>,
    /// virtual name -> names of the packages that provide it.
    pub providers: BTreeMap<String, BTreeSet<String>>,
    /// Where the packages come from (the words of resolution errors).
    pub source: IndexSource,
}

/// What an [`Index`] was made from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexSource {
    /// The machine's apt `Packages` indexes (`cargo xtask lock`).
    #[default]
    Apt,
    /// The committed lock's own packages, with the `control` of each
    /// verified .deb (`lock --check`, the pinned-inputs gate).
    Lock,
}

impl IndexSource {
    fn name(self) -> &'static str {
        match self {
            IndexSource::Apt => "the apt index",
            IndexSource::Lock => LOCK_PATH,
        }
    }

    fn fix(self, package: &str) -> String {
        match self {
            IndexSource::Apt => {
                format!("check the name (apt-cache policy {package}) or run apt-get update")
            }
            IndexSource::Lock => "run cargo xtask lock and commit the result".to_string(),
        }
    }
}

impl Index {
    /// Builds the index from `Packages` stanzas, keeping packages of `arch`
    /// or `all` and, per name, the highest version.
    pub fn from_stanzas(stanzas: &[Stanza], arch: &str) -> Result<Index> {
        let mut packages: BTreeMap<String, Candidate> = BTreeMap::new();
        for s in stanzas {
            let field = |f: &str| {
                s.get(f).map(str::to_string).with_context(|| {
                    format!(
                        "package {:?} in the apt index has no {f} field",
                        s.get("Package").unwrap_or("?")
                    )
                })
            };
            let a = field("Architecture")?;
            if a != arch && a != "all" {
                continue;
            }
            let name = field("Package")?;
            let mut depends = parse_deps(s.get("Pre-Depends").unwrap_or(""))?;
            depends.extend(parse_deps(s.get("Depends").unwrap_or(""))?);
            let sha = field("SHA256")?;
            let c = Candidate {
                deb: LockedPackage {
                    name: name.clone(),
                    version: field("Version")?,
                    architecture: a,
                    filename: field("Filename")?,
                    size: field("Size")?
                        .parse()
                        .with_context(|| format!("package {name:?}: Size is not a number"))?,
                    sha256: format!("sha256:{sha}"),
                    required_by: Vec::new(),
                },
                priority: s.get("Priority").unwrap_or("optional").to_string(),
                depends,
                provides: parse_deps(s.get("Provides").unwrap_or(""))?
                    .into_iter()
                    .flatten()
                    .collect(),
            };
            match packages.get(&name) {
                Some(prev) if version_cmp(&prev.deb.version, &c.deb.version) != Ordering::Less => {}
                _ => {
                    packages.insert(name, c);
                }
            }
        }
        Ok(Index::of(packages, IndexSource::Apt))
    }

    fn of(packages: BTreeMap<String, Candidate>, source: IndexSource) -> Index {
        let mut providers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in packages.values() {
            for p in &c.provides {
                providers
                    .entry(p.name.clone())
                    .or_default()
                    .insert(c.deb.name.clone());
            }
        }
        Index {
            packages,
            providers,
            source,
        }
    }

    /// The index the lock's own packages make: each locked package as the
    /// lock records it, with the Pre-Depends, Depends, Provides and
    /// Priority of the `control` file of its verified .deb (`controls`, in
    /// the order of `lock.package`). Resolving the images inside it is the
    /// check that the lock is closed: it asks nothing of today's index.
    pub fn of_lock(lock: &Lock, controls: &[String]) -> Result<Index> {
        if controls.len() != lock.package.len() {
            bail!(
                "{LOCK_PATH}: {} packages but {} control files",
                lock.package.len(),
                controls.len()
            );
        }
        let mut packages = BTreeMap::new();
        for (p, control) in lock.package.iter().zip(controls) {
            let what = || {
                format!(
                    "package {} {} (the control file of its .deb)",
                    p.name, p.version
                )
            };
            let stanzas = parse_stanzas(control).with_context(what)?;
            let [s] = stanzas.as_slice() else {
                bail!(
                    "{}: expected one paragraph, found {}",
                    what(),
                    stanzas.len()
                );
            };
            for (field, locked) in [("Package", &p.name), ("Version", &p.version)] {
                if s.get(field) != Some(locked.as_str()) {
                    bail!(
                        "{}: {field} is {:?}, the lock says {locked:?}; run cargo xtask lock",
                        what(),
                        s.get(field).unwrap_or("")
                    );
                }
            }
            let mut depends = parse_deps(s.get("Pre-Depends").unwrap_or("")).with_context(what)?;
            depends.extend(parse_deps(s.get("Depends").unwrap_or("")).with_context(what)?);
            let c = Candidate {
                deb: LockedPackage {
                    required_by: Vec::new(),
                    ..p.clone()
                },
                priority: s.get("Priority").unwrap_or("optional").to_string(),
                depends,
                provides: parse_deps(s.get("Provides").unwrap_or(""))
                    .with_context(what)?
                    .into_iter()
                    .flatten()
                    .collect(),
            };
            if packages.insert(p.name.clone(), c).is_some() {
                bail!(
                    "{LOCK_PATH}: package {} is locked twice; run cargo xtask lock",
                    p.name
                );
            }
        }
        Ok(Index::of(packages, IndexSource::Lock))
    }

    /// The package that satisfies one alternative, if any.
    fn satisfy(&self, dep: &Dep) -> Option<&Candidate> {
        let real = self.packages.get(&dep.name).filter(|c| {
            dep.constraint
                .as_ref()
                .is_none_or(|k| k.allows(&c.deb.version))
        });
        if real.is_some() {
            return real;
        }
        let mut providers: Vec<&Candidate> = self
            .providers
            .get(&dep.name)?
            .iter()
            .filter_map(|n| self.packages.get(n))
            .filter(|c| {
                c.provides.iter().any(|p| {
                    p.name == dep.name
                        && match (&dep.constraint, &p.constraint) {
                            (None, _) => true,
                            (Some(k), Some(pc)) if pc.op == "=" => k.allows(&pc.version),
                            (Some(_), _) => false,
                        }
                })
            })
            .collect();
        providers.sort_by_key(|c| (priority_rank(&c.priority), c.deb.name.clone()));
        providers.first().copied()
    }
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        _ => 4,
    }
}

/// The lockfile's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    pub architecture: String,
    pub suite: String,
    #[serde(default)]
    pub image: Vec<LockedImage>,
    #[serde(default)]
    pub package: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    pub name: String,
    /// The requested packages, as listed in the image's `[debian]` table.
    pub packages: Vec<String>,
    /// Packages left out on purpose (`[debian] exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Workspace base images whose packages this image does not install
    /// again (they are already in the base's layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<String>,
}

/// What one image asks the resolver for.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    pub name: String,
    pub packages: Vec<String>,
    pub exclude: Vec<String>,
    /// Its workspace base images, nearest first.
    pub bases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Path of the .deb inside the archive (`pool/main/...`); the mirror is
    /// the machine's apt configuration.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// The requested packages whose closure contains this one.
    pub required_by: Vec<String>,
}

impl Lock {
    /// The locked packages an image installs, in name order.
    pub fn packages_of(&self, image: &str) -> Option<Vec<&LockedPackage>> {
        let img = self.image.iter().find(|i| i.name == image)?;
        Some(
            self.package
                .iter()
                .filter(|p| p.required_by.iter().any(|r| img.packages.contains(r)))
                .collect(),
        )
    }
}

/// Resolves every image's requested packages to their closure.
pub fn resolve(
    index: &Index,
    architecture: &str,
    suite: &str,
    images: &[(String, Vec<String>)],
) -> Result<Lock> {
    let requests: Vec<ImageRequest> = images
        .iter()
        .map(|(name, packages)| ImageRequest {
            name: name.clone(),
            packages: packages.clone(),
            ..ImageRequest::default()
        })
        .collect();
    resolve_images(index, architecture, suite, &requests)
}

/// Resolves every image's requested packages to their closure, leaving out
/// each image's `exclude` list and the packages its workspace bases install.
pub fn resolve_images(
    index: &Index,
    architecture: &str,
    suite: &str,
    images: &[ImageRequest],
) -> Result<Lock> {
    let mut required_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut closures: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Bases first: an image's base is resolved before the image.
    let mut order: Vec<&ImageRequest> = Vec::new();
    let mut left: Vec<&ImageRequest> = images.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|i| {
            let ready = i.bases.iter().all(|b| {
                order.iter().any(|o| &o.name == b) || !images.iter().any(|x| &x.name == b)
            });
            if ready {
                order.push(i);
            }
            !ready
        });
        if left.len() == before {
            bail!("the images' workspace bases form a cycle");
        }
    }
    for req in order {
        let image = &req.name;
        let requests = &req.packages;
        let provided: BTreeSet<String> = req
            .bases
            .iter()
            .filter_map(|b| closures.get(b))
            .flatten()
            .cloned()
            .collect();
        let mut closure = provided.clone();
        for root in requests {
            if provided.contains(root) {
                continue;
            }
            if !index.packages.contains_key(root) {
                errors.push(format!(
                    "image {image}: package {root:?} is not in {} for {architecture}; {}",
                    index.source.name(),
                    index.source.fix(root)
                ));
                continue;
            }
            let mut todo = vec![root.clone()];
            let mut seen = BTreeSet::new();
            while let Some(name) = todo.pop() {
                if provided.contains(&name) || req.exclude.contains(&name) {
                    continue;
                }
                if !seen.insert(name.clone()) {
                    continue;
                }
                let c = &index.packages[&name];
                for group in &c.depends {
                    // A group one of whose packages is excluded or provided
                    // by a base is satisfied as it is.
                    if group
                        .iter()
                        .any(|d| req.exclude.contains(&d.name) || provided.contains(&d.name))
                    {
                        continue;
                    }
                    match group.iter().find_map(|d| index.satisfy(d)) {
                        Some(dep) => todo.push(dep.deb.name.clone()),
                        None => errors.push(format!(
                            "package {name} {} depends on {}, which no package in {} satisfies (requested by {root} in image {image}); {}",
                            c.deb.version,
                            group
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(" | "),
                            index.source.name(),
                            match index.source {
                                IndexSource::Apt => "run apt-get update or change the package list".to_string(),
                                IndexSource::Lock => index.source.fix(&name),
                            }
                        )),
                    }
                }
            }
            for name in seen {
                closure.insert(name.clone());
                required_by.entry(name).or_default().insert(root.clone());
            }
        }
        closures.insert(image.clone(), closure);
    }
    if !errors.is_empty() {
        bail!(
            "cannot resolve the Debian packages:\n  {}",
            errors.join("\n  ")
        );
    }
    let package = required_by
        .into_iter()
        .map(|(name, by)| {
            let c = &index.packages[&name];
            LockedPackage {
                name,
                required_by: by.into_iter().collect(),
                ..c.deb.clone()
            }
        })
        .collect();
    let mut image: Vec<LockedImage> = images
        .iter()
        .map(|i| LockedImage {
            name: i.name.clone(),
            packages: i.packages.clone(),
            exclude: i.exclude.clone(),
            bases: i
                .bases
                .iter()
                .filter(|b| images.iter().any(|x| &x.name == *b))
                .cloned()
                .collect(),
        })
        .collect();
    image.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Lock {
        version: 1,
        architecture: architecture.to_string(),
        suite: suite.to_string(),
        image,
        package,
    })
}

const LOCK_HEADER: &str = "# Debian packages of the images' [debian] tables, with their dependency\n# closure. Written by `cargo xtask lock`; checked by `cargo xtask lock --check`.\n# Packages are fetched through the machine's apt configuration and verified\n# against size and sha256 below; no mirror host is recorded here.\n\n";

pub fn render_lock(lock: &Lock) -> Result<String> {
    crate::lockfile::render(LOCK_HEADER, LOCK_PATH, lock)
}

pub fn parse_lock(text: &str) -> Result<Lock> {
    crate::lockfile::parse(LOCK_PATH, text, |l: &Lock| l.version)
}

/// Whether the committed `lock` satisfies the images' `requests` on its own,
/// as `cargo build --locked` trusts Cargo.lock: every requested package is
/// locked, and every Pre-Depends and Depends of each locked package is met
/// inside the lock (`controls`: the `control` file of each locked .deb,
/// verified against the lock, in the order of `lock.package`). Today's apt
/// index is not asked. One line per problem; empty when satisfied.
pub fn unsatisfied(
    lock: &Lock,
    architecture: &str,
    requests: &[ImageRequest],
    controls: &[String],
) -> Vec<String> {
    if lock.architecture != architecture {
        return vec![format!(
            "{LOCK_PATH} is for architecture {}, this build is for {architecture}; run cargo xtask lock on a {architecture} machine",
            lock.architecture
        )];
    }
    let index = match Index::of_lock(lock, controls) {
        Ok(index) => index,
        Err(e) => return vec![format!("{e:#}")],
    };
    match resolve_images(&index, &lock.architecture, &lock.suite, requests) {
        Ok(resolved) => diff_locks(lock, &resolved),
        Err(e) => {
            let mut out = Vec::new();
            for r in requests {
                match lock.image.iter().find(|i| i.name == r.name) {
                    None => out.push(format!("image {} is not in the lock", r.name)),
                    Some(i) => out.extend(crate::lockfile::list_changes(
                        &r.name,
                        "package",
                        &i.packages,
                        &r.packages,
                    )),
                }
            }
            out.push(format!("{e:#}"));
            out
        }
    }
}

/// What differs between the committed lock and a fresh resolution, one line
/// per difference; empty when they match.
pub fn diff_locks(old: &Lock, new: &Lock) -> Vec<String> {
    let mut out = Vec::new();
    for (what, a, b) in [
        ("architecture", &old.architecture, &new.architecture),
        ("suite", &old.suite, &new.suite),
    ] {
        if a != b {
            out.push(format!("{what} changed: {a} -> {b}"));
        }
    }
    for n in &new.image {
        if let Some(o) = old.image.iter().find(|o| o.name == n.name)
            && (o.exclude != n.exclude || o.bases != n.bases)
        {
            out.push(format!(
                "image {}: exclude [{}] -> [{}], bases [{}] -> [{}]",
                n.name,
                o.exclude.join(", "),
                n.exclude.join(", "),
                o.bases.join(", "),
                n.bases.join(", ")
            ));
        }
    }
    let old_imgs: BTreeMap<_, _> = old.image.iter().map(|i| (&i.name, &i.packages)).collect();
    let new_imgs: BTreeMap<_, _> = new.image.iter().map(|i| (&i.name, &i.packages)).collect();
    for (name, pkgs) in &new_imgs {
        match old_imgs.get(name) {
            None => out.push(format!("image {name} is not in the lock")),
            Some(old_pkgs) => {
                out.extend(crate::lockfile::list_changes(
                    name, "package", old_pkgs, pkgs,
                ));
            }
        }
    }
    for name in old_imgs.keys().filter(|n| !new_imgs.contains_key(*n)) {
        out.push(format!(
            "image {name} is locked but has no [debian] table any more"
        ));
    }
    let old_pkgs: BTreeMap<_, _> = old.package.iter().map(|p| (&p.name, p)).collect();
    let new_pkgs: BTreeMap<_, _> = new.package.iter().map(|p| (&p.name, p)).collect();
    for (name, n) in &new_pkgs {
        match old_pkgs.get(name) {
            None => out.push(format!(
                "package {name} {} added (required by {})",
                n.version,
                n.required_by.join(", ")
            )),
            Some(o) if o.version != n.version => out.push(format!(
                "package {name} version changed: {} -> {}",
                o.version, n.version
            )),
            Some(o) if o != n => {
                let mut fields = Vec::new();
                if o.sha256 != n.sha256 || o.size != n.size {
                    fields.push(format!("sha256 {} -> {}", o.sha256, n.sha256));
                }
                if o.filename != n.filename || o.architecture != n.architecture {
                    fields.push(format!("filename {} -> {}", o.filename, n.filename));
                }
                if o.required_by != n.required_by {
                    fields.push(format!(
                        "required_by [{}] -> [{}]",
                        o.required_by.join(", "),
                        n.required_by.join(", ")
                    ));
                }
                out.push(format!("package {name} changed: {}", fields.join("; ")));
            }
            Some(_) => {}
        }
    }
    for (name, o) in &old_pkgs {
        if !new_pkgs.contains_key(name) {
            out.push(format!(
                "package {name} {} removed (was required by {})",
                o.version,
                o.required_by.join(", ")
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Reading a .deb

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebEntry {
    pub path: ImagePath,
    pub kind: DebKind,
    pub mode: u32,
    pub owner: Owner,
}

#[derive(Debug, Clone)]
pub struct DebContents {
    /// The `control` file of `control.tar`.
    pub control: String,
    /// The sanitised entries of `data.tar`, in archive order.
    pub entries: Vec<DebEntry>,
}

fn ty_is_file(h: &tar::Header) -> bool {
    matches!(
        h.entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    )
}

/// Normalises an archive path (see the module docs). `Ok(None)` is the root.
fn sanitise_path(raw: &str) -> std::result::Result<Option<ImagePath>, String> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("path {raw:?} contains \"..\"")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    ImagePath::parse(&format!("/{}", parts.join("/")))
        .map(Some)
        .map_err(|e| format!("path {raw:?}: {e}"))
}

/// True when `target`, resolved lexically from the folder of `link`, stays
/// inside the root.
fn link_stays_inside(link: &ImagePath, target: &str) -> bool {
    let mut stack: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let p = link.as_str();
        p.rsplit_once('/')
            .map_or(Vec::new(), |(dir, _)| dir.split('/').collect())
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            p => stack.push(p),
        }
    }
    true
}

fn decompress(member: &str, bytes: &[u8], limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let suffix = member.rsplit_once('.').map_or("", |(_, s)| s);
    match suffix {
        "tar" => out.extend_from_slice(bytes),
        "gz" => {
            flate2::read::GzDecoder::new(bytes)
                .take(limit + 1)
                .read_to_end(&mut out)?;
        }
        "xz" => {
            let mut limited = LimitedWriter {
                out: &mut out,
                limit,
                exceeded: false,
            };
            // lzma-rs 0.3 panics on some malformed headers (an integer
            // overflow in its xz index; found by the `deb` fuzz target,
            // fuzz/corpus/deb/crash-*): a panic there is a malformed
            // stream, never a crash of the lane.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                lzma_rs::xz_decompress(&mut io::BufReader::new(bytes), &mut limited)
            }));
            if limited.exceeded {
                bail!("it unpacks to more than {limit} bytes");
            }
            match r {
                Ok(r) => r.map_err(|e| anyhow::anyhow!("not valid xz: {e:?}"))?,
                Err(_) => bail!("not valid xz: the decoder failed on a malformed stream"),
            }
        }
        "zst" => {
            ruzstd::decoding::StreamingDecoder::new(bytes)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .take(limit + 1)
                .read_to_end(&mut out)?;
        }
        _ => bail!("compression {suffix:?} is not supported (gz, xz, zst or none)"),
    }
    if out.len() as u64 > limit {
        bail!("it unpacks to more than {limit} bytes");
    }
    Ok(out)
}

struct LimitedWriter<'a> {
    out: &'a mut Vec<u8>,
    limit: u64,
    exceeded: bool,
}

impl io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() as u64 + buf.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("size limit exceeded"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a `.deb` (ar archive: `debian-binary`, `control.tar.*`,
/// `data.tar.*`) applying the rules of the module docs. Errors list every
/// problem found, prefixed with the package name.
pub fn read_deb(package: &str, bytes: &[u8]) -> Result<DebContents> {
    read_deb_limited(package, bytes, DEB_LIMITS)
}

/// The ar members' headers, checked before the `ar` crate reads them: a
/// .deb is a plain ar archive (short names, sizes inside the file). GNU
/// and BSD long-name tables are refused: ar 0.9 indexes its name table
/// with a number from the header (a panic, found by the `deb` fuzz target)
/// and allocates a table of the size the header claims.
fn check_ar_headers(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(mut at) = bytes.strip_prefix(b"!<arch>\n").map(|_| 8usize) else {
        return Ok(()); // not an ar archive: the ar crate says so
    };
    while at < bytes.len() {
        let Some(h) = bytes.get(at..at + 60) else {
            return Err(format!(
                "the ar archive ends inside a member header at byte {at}"
            ));
        };
        if &h[58..60] != b"`\n" {
            return Err(format!("the ar member header at byte {at} is malformed"));
        }
        let name = &h[..16];
        if name.starts_with(b"/") || name.starts_with(b"#1/") {
            return Err(format!(
                "the ar archive uses long member names (at byte {at}); a .deb's members have short names"
            ));
        }
        let size: u64 = std::str::from_utf8(&h[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("the ar member at byte {at} has no valid size"))?;
        let end = (at as u64 + 60).saturating_add(size);
        if end > bytes.len() as u64 {
            return Err(format!(
                "the ar member at byte {at} claims {size} bytes, more than the file holds"
            ));
        }
        at = (end + (size & 1)) as usize;
    }
    Ok(())
}

fn read_deb_limited(package: &str, bytes: &[u8], limits: DebLimits) -> Result<DebContents> {
    check_ar_headers(bytes).map_err(|e| anyhow::anyhow!("package {package}: {e}"))?;
    let mut ar = ar::Archive::new(bytes);
    let (mut control_tar, mut data_tar) = (None, None);
    let mut members = Vec::new();
    while let Some(m) = ar.next_entry() {
        if members.len() >= limits.members {
            bail!(
                "package {package}: the ar archive has more than {} members; a .deb has three",
                limits.members
            );
        }
        let mut m = m.with_context(|| format!("package {package}: reading the ar archive"))?;
        let id = String::from_utf8_lossy(m.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let mut buf = Vec::new();
        m.read_to_end(&mut buf)
            .with_context(|| format!("package {package}: reading member {id}"))?;
        members.push(id.clone());
        if id == "debian-binary" && !buf.starts_with(b"2.") {
            bail!(
                "package {package}: debian-binary says {:?}; only format 2.x is supported",
                String::from_utf8_lossy(&buf).trim()
            );
        }
        if id.starts_with("control.tar") && control_tar.is_none() {
            control_tar = Some(
                decompress(&id, &buf, limits.control)
                    .with_context(|| format!("package {package}: unpacking {id}"))?,
            );
        } else if id.starts_with("data.tar") && data_tar.is_none() {
            data_tar = Some(
                decompress(&id, &buf, limits.unpacked)
                    .with_context(|| format!("package {package}: unpacking {id}"))?,
            );
        }
    }
    if members.first().map(String::as_str) != Some("debian-binary") {
        bail!(
            "package {package}: not a .deb (first ar member is {members:?}, expected debian-binary)"
        );
    }
    let (Some(control_tar), Some(data_tar)) = (control_tar, data_tar) else {
        bail!("package {package}: the .deb lacks control.tar or data.tar (members: {members:?})");
    };

    let mut control = None;
    for (n, e) in tar::Archive::new(&control_tar[..])
        .entries()
        .with_context(|| format!("package {package}: reading control.tar"))?
        .enumerate()
    {
        if n >= limits.entries {
            bail!(
                "package {package}: control.tar has more than {} entries",
                limits.entries
            );
        }
        let mut e = e.with_context(|| format!("package {package}: reading control.tar"))?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if e.header().entry_type().is_file() && name.trim_start_matches("./") == "control" {
            let mut s = String::new();
            e.read_to_string(&mut s)
                .with_context(|| format!("package {package}: control is not UTF-8"))?;
            control = Some(s);
        }
    }
    let control =
        control.with_context(|| format!("package {package}: control.tar has no control file"))?;

    let mut problems = Vec::new();
    let mut entries: Vec<DebEntry> = Vec::new();
    let mut index: BTreeMap<ImagePath, usize> = BTreeMap::new();
    // File content held, hard-link copies included (see MAX_UNPACKED).
    let mut content = 0u64;
    for (n, e) in tar::Archive::new(&data_tar[..])
        .entries()
        .with_context(|| format!("package {package}: reading data.tar"))?
        .enumerate()
    {
        if n >= limits.entries {
            problems.push(format!("data.tar has more than {} entries", limits.entries));
            break;
        }
        let mut e = e.with_context(|| format!("package {package}: reading data.tar"))?;
        let Ok(raw) = String::from_utf8(e.path_bytes().into_owned()) else {
            problems.push(format!(
                "path {:?} is not UTF-8",
                String::from_utf8_lossy(&e.path_bytes())
            ));
            continue;
        };
        let path = match sanitise_path(&raw) {
            Ok(Some(p)) => p,
            Ok(None) => continue, // the root itself: every layer has it
            Err(msg) => {
                problems.push(msg);
                continue;
            }
        };
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        // Audit finding 10: a setuid or setgid file anyone may write is a
        // root shell for anyone; refused (plain setuid/setgid files, such
        // as mount or su, are kept and reported by drift).
        if mode & 0o6000 != 0 && mode & 0o002 != 0 && ty_is_file(h) {
            problems.push(format!(
                "{path} is setuid/setgid and world-writable (mode {mode:04o}): refused"
            ));
            continue;
        }
        let owner = Owner {
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
        };
        let ty = h.entry_type();
        let link_name = e
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let kind = match ty {
            tar::EntryType::Directory => DebKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)
                    .with_context(|| format!("package {package}: reading {path}"))?;
                content += buf.len() as u64;
                DebKind::File(buf)
            }
            tar::EntryType::Symlink => {
                let target = link_name.unwrap_or_default();
                if target.is_empty() || target.contains('\0') {
                    problems.push(format!("symlink {path} has an empty target"));
                    continue;
                }
                if !link_stays_inside(&path, &target) {
                    problems.push(format!("symlink {path} -> {target} leads outside the root"));
                    continue;
                }
                DebKind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = link_name.unwrap_or_default();
                let found = match sanitise_path(&target) {
                    Ok(Some(t)) => index.get(&t).map(|&i| &entries[i]),
                    _ => None,
                };
                match found {
                    Some(DebEntry {
                        kind: DebKind::File(bytes),
                        ..
                    }) => {
                        content += bytes.len() as u64;
                        if content > limits.unpacked {
                            problems.push(format!(
                                "its files hold more than {} bytes (hard links count again)",
                                limits.unpacked
                            ));
                            break;
                        }
                        DebKind::File(bytes.clone())
                    }
                    _ => {
                        problems.push(format!(
                            "hard link {path} -> {target} does not name an earlier regular file of the archive"
                        ));
                        continue;
                    }
                }
            }
            other => {
                let what = match other {
                    tar::EntryType::Char => "a character device",
                    tar::EntryType::Block => "a block device",
                    tar::EntryType::Fifo => "a FIFO",
                    _ => "a special file",
                };
                problems.push(format!(
                    "{path} is {what}; only files, directories and links are allowed"
                ));
                continue;
            }
        };
        if let Some(&i) = index.get(&path) {
            if !(entries[i].kind == DebKind::Dir && kind == DebKind::Dir) {
                problems.push(format!("{path} appears twice in the archive"));
            }
            continue;
        }
        index.insert(path.clone(), entries.len());
        entries.push(DebEntry {
            path,
            kind,
            mode,
            owner,
        });
    }
    if !problems.is_empty() {
        bail!(
            "package {package}: the archive is refused (see docs/debian.md):\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(DebContents { control, entries })
}

// ---------------------------------------------------------------------------
// Adapters: apt, the lockfile, the .deb cache.

pub fn verify(pkg: &LockedPackage, bytes: &[u8], origin: &str) -> Result<()> {
    let actual = layer::sha256(bytes);
    if actual != pkg.sha256 || bytes.len() as u64 != pkg.size {
        bail!(
            "package {} {}: the {origin} does not match {LOCK_PATH}: expected {} ({} bytes), actual {actual} ({} bytes); nothing was built. Delete the file to fetch it again, or run cargo xtask lock if the lock is stale",
            pkg.name,
            pkg.version,
            pkg.sha256,
            pkg.size,
            bytes.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_like_dpkg() {
        let lt = [
            ("1.0", "1.1"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0-1"),
            ("1.0-1", "1.0-2"),
            ("1:0.1", "2:0.0"),
            ("9", "1:0"),
            ("2.36-9+deb12u10", "2.36-9+deb12u14"),
            ("1.2a", "1.2b"),
            ("1.2", "1.2a"),
            ("1.2a", "1.2+"),
            ("1.09", "1.10"),
            ("12.4+deb12u9", "12.4+deb12u15"),
        ];
        for (a, b) in lt {
            assert_eq!(version_cmp(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(version_cmp(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(version_cmp("1.01", "1.1"), Ordering::Equal);
        assert_eq!(version_cmp("0:1.0", "1.0"), Ordering::Equal);
    }

    #[test]
    fn deps_parse() {
        let d =
            parse_deps("openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0, python3:any").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0][0].constraint.as_ref().unwrap().op, ">=");
        assert_eq!(d[1][1].name, "debconf-2.0");
        assert_eq!(d[2][0].name, "python3");
    }

    pub(super) const INDEX: &str = "\
Package: app
Version: 1.0
Architecture: amd64
Depends: libc (>= 2), awk, dc (>= 1) | dc-virtual
Filename: pool/main/a/app/app_1.0_amd64.deb
Size: 10
SHA256: aa

Package: libc
Version: 2.1
Architecture: amd64
Filename: pool/main/l/libc/libc_2.1_amd64.deb
Size: 20
SHA256: bb

Package: libc
Version: 2.0
Architecture: amd64
Filename: pool/main/l/libc/libc_2.0_amd64.deb
Size: 21
SHA256: b0

Package: libc
Version: 3.0
Architecture: arm64
Filename: pool/main/l/libc/libc_3.0_arm64.deb
Size: 22
SHA256: b3

Package: gawk
Version: 5
Architecture: amd64
Priority: optional
Provides: awk
Filename: pool/main/g/gawk.deb
Size: 30
SHA256: cc

Package: mawk
Version: 1
Architecture: amd64
Priority: required
Provides: awk
Filename: pool/main/m/mawk.deb
Size: 40
SHA256: dd

Package: dc
Version: 0.5
Architecture: all
Filename: pool/main/d/dc.deb
Size: 50
SHA256: ee

Package: dcx
Version: 1
Architecture: all
Provides: dc-virtual
Filename: pool/main/d/dcx.deb
Size: 60
SHA256: ff
";

    fn index() -> Index {
        Index::from_stanzas(&parse_stanzas(INDEX).unwrap(), "amd64").unwrap()
    }

    #[test]
    fn closure_is_deterministic_and_checks_versions() {
        let lock = resolve(
            &index(),
            "amd64",
            "test",
            &[("img".into(), vec!["app".into()])],
        )
        .unwrap();
        let names: Vec<_> = lock
            .package
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect();
        // highest libc of amd64; awk -> mawk (required beats optional);
        // dc 0.5 is too old, so the virtual alternative dcx is taken.
        assert_eq!(names, ["app 1.0", "dcx 1", "libc 2.1", "mawk 1"]);
        assert!(lock.package.iter().all(|p| p.required_by == ["app"]));
        assert_eq!(lock.package[2].sha256, "sha256:bb");
        let text = render_lock(&lock).unwrap();
        assert_eq!(parse_lock(&text).unwrap(), lock);
        assert!(!text.contains("://"), "no mirror in the lock:\n{text}");
    }

    #[test]
    fn unknown_and_unsatisfiable_are_errors() {
        let e = resolve(
            &index(),
            "amd64",
            "t",
            &[("img".into(), vec!["nope".into()])],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("package \"nope\" is not in the apt index"),
            "{e}"
        );
        let text = INDEX.replace("Depends: libc (>= 2)", "Depends: libc (>= 9)");
        let idx = Index::from_stanzas(&parse_stanzas(&text).unwrap(), "amd64").unwrap();
        let e = resolve(&idx, "amd64", "t", &[("img".into(), vec!["app".into()])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("package app 1.0 depends on libc (>= 9)"), "{e}");
    }

    #[test]
    fn diff_names_the_package() {
        let idx = index();
        let a = resolve(&idx, "amd64", "t", &[("img".into(), vec!["app".into()])]).unwrap();
        let b = resolve(
            &idx,
            "amd64",
            "t",
            &[("img".into(), vec!["app".into(), "gawk".into()])],
        )
        .unwrap();
        assert!(diff_locks(&a, &a).is_empty());
        let d = diff_locks(&a, &b);
        assert!(
            d.contains(&"image img: package gawk is requested but not locked".into()),
            "{d:?}"
        );
        assert!(
            d.contains(&"package gawk 5 added (required by gawk)".into()),
            "{d:?}"
        );
        let mut c = a.clone();
        c.package[2].version = "2.0".into();
        assert!(diff_locks(&c, &a).contains(&"package libc version changed: 2.0 -> 2.1".into()));
    }

    pub(super) fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub(super) fn deb_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut ar = ar::Builder::new(Vec::new());
        for (name, bytes) in members {
            ar.append(
                &ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64),
                &bytes[..],
            )
            .unwrap();
        }
        ar.into_inner().unwrap()
    }

    #[test]
    fn every_data_compression_reads_the_same() {
        let control = tar_of(&[("./control", b"Package: p\nVersion: 1\n")]);
        let data = tar_of(&[("./usr/share/p/x", b"payload")]);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut xz).unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        for (member, bytes) in [
            ("data.tar.xz", xz),
            ("data.tar.zst", zst),
            ("data.tar.gz", gz),
            ("data.tar", data.clone()),
        ] {
            let deb = deb_of(&[
                ("debian-binary", b"2.0\n".to_vec()),
                ("control.tar", control.clone()),
                (member, bytes),
            ]);
            let c = read_deb("p", &deb).unwrap();
            assert_eq!(c.control, "Package: p\nVersion: 1\n", "{member}");
            let files: Vec<_> = c
                .entries
                .iter()
                .map(|e| (e.path.as_str(), e.kind.clone()))
                .collect();
            assert_eq!(
                files,
                [("usr/share/p/x", DebKind::File(b"payload".to_vec()))],
                "{member}"
            );
        }
        let bad = deb_of(&[
            ("debian-binary", b"3.0\n".to_vec()),
            ("control.tar", control.clone()),
            ("data.tar", data.clone()),
        ]);
        let e = read_deb("p", &bad).unwrap_err().to_string();
        assert!(e.contains("only format 2.x"), "{e}");
        let bz = deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", control),
            ("data.tar.bz2", data),
        ]);
        let e = format!("{:#}", read_deb("p", &bz).unwrap_err());
        assert!(e.contains("compression \"bz2\" is not supported"), "{e}");
    }

    #[test]
    fn links_are_checked_lexically() {
        let p = ImagePath::parse("/usr/lib/x").unwrap();
        assert!(link_stays_inside(&p, "../../etc/y"));
        assert!(link_stays_inside(&p, "/lib/x86_64-linux-gnu/ld.so"));
        assert!(!link_stays_inside(&p, "../../../etc/passwd"));
        assert!(!link_stays_inside(&p, "/../etc/passwd"));
        assert_eq!(sanitise_path("./").unwrap(), None);
        assert_eq!(
            sanitise_path("/etc//x/.").unwrap().unwrap().as_str(),
            "etc/x"
        );
        assert!(sanitise_path("./usr/../../x").is_err());
    }
}

/// Hostile Debian inputs (docs/fault-matrix-parsers.md): `Packages` indexes and control
/// stanzas, dependency fields, versions, `lockfiles/debian.lock`. No panic;
/// lock errors name the file.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated, mutated_text};
    use proptest::prelude::*;

    const LOCK_SAMPLE: &str = include_str!("../../lockfiles/debian.lock");

    fn index_and_resolve(text: &str) {
        let Ok(stanzas) = parse_stanzas(text) else {
            return;
        };
        for s in &stanzas {
            for field in ["Depends", "Pre-Depends", "Provides"] {
                if let Some(v) = s.get(field) {
                    let _ = parse_deps(v);
                }
            }
        }
        if let Ok(index) = Index::from_stanzas(&stanzas, "amd64") {
            let _ = resolve(&index, "amd64", "t", &[("img".into(), vec!["app".into()])]);
        }
    }

    const PACKAGE: &str = "hostile-pkg";

    /// A .deb with `data` (an uncompressed tar) compressed as `member` says.
    fn deb_with(member: &str, data: &[u8]) -> Vec<u8> {
        let control = tests::tar_of(&[("./control", b"Package: p\nVersion: 1\n")]);
        let data = match member.rsplit_once('.').map_or("", |(_, s)| s) {
            "xz" => {
                let mut xz = Vec::new();
                lzma_rs::xz_compress(&mut &data[..], &mut xz).unwrap();
                xz
            }
            "zst" => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            "gz" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                std::io::Write::write_all(&mut gz, data).unwrap();
                gz.finish().unwrap()
            }
            _ => data.to_vec(),
        };
        tests::deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", control),
            (member, data),
        ])
    }

    fn sample_data() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, ty: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("./", tar::EntryType::Directory, b"", None);
        add("./usr/bin/", tar::EntryType::Directory, b"", None);
        add(
            "./usr/bin/tool",
            tar::EntryType::Regular,
            b"\x7fELF tool",
            None,
        );
        add(
            "./usr/bin/alias",
            tar::EntryType::Symlink,
            b"",
            Some("tool"),
        );
        add(
            "./usr/bin/again",
            tar::EntryType::Link,
            b"",
            Some("./usr/bin/tool"),
        );
        b.into_inner().unwrap()
    }

    fn check_deb(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Err(e) = read_deb(PACKAGE, bytes) {
            clear_error(&e, PACKAGE)?;
        }
        Ok(())
    }

    #[test]
    fn the_deb_samples_read() {
        for member in ["data.tar", "data.tar.gz", "data.tar.xz", "data.tar.zst"] {
            let c = read_deb(PACKAGE, &deb_with(member, &sample_data())).unwrap();
            assert_eq!(c.entries.len(), 4, "{member}");
        }
    }

    fn small(unpacked: u64, entries: usize) -> DebLimits {
        DebLimits {
            control: MAX_CONTROL_UNPACKED,
            unpacked,
            entries,
            members: MAX_AR_MEMBERS,
        }
    }

    #[test]
    fn decompression_bombs_are_refused_at_the_cap() {
        // 4 MiB of zeros inside one file: a few KiB compressed.
        let data = tests::tar_of(&[("./big", &vec![0u8; 4 << 20][..])]);
        for member in ["data.tar.gz", "data.tar.xz", "data.tar.zst", "data.tar"] {
            let deb = deb_with(member, &data);
            let e = format!(
                "{:#}",
                read_deb_limited(PACKAGE, &deb, small(1 << 20, MAX_ENTRIES)).unwrap_err()
            );
            assert!(
                e.contains(&format!(
                    "package {PACKAGE}: unpacking {member}: it unpacks to more than 1048576 bytes"
                )),
                "{member}: {e}"
            );
        }
    }

    #[test]
    fn a_world_writable_setuid_file_is_refused_and_plain_setuid_is_kept() {
        let data = |mode: u32| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_mode(mode);
            h.set_cksum();
            b.append_data(&mut h, "./usr/bin/su", &b"\x7fELF"[..])
                .unwrap();
            b.into_inner().unwrap()
        };
        let e = format!(
            "{:#}",
            read_deb(PACKAGE, &deb_with("data.tar", &data(0o4757))).unwrap_err()
        );
        assert!(
            e.contains("usr/bin/su is setuid/setgid and world-writable (mode 4757): refused"),
            "{e}"
        );
        let ok = read_deb(PACKAGE, &deb_with("data.tar", &data(0o4755))).unwrap();
        assert_eq!(ok.entries[0].mode, 0o4755);
    }

    #[test]
    fn hard_links_count_against_the_content_cap() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(300 << 10);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "./f", &vec![1u8; 300 << 10][..])
            .unwrap();
        for i in 0..10 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            h.set_link_name("./f").unwrap();
            h.set_cksum();
            b.append_data(&mut h, format!("./l{i}"), &b""[..]).unwrap();
        }
        let deb = deb_with("data.tar.gz", &b.into_inner().unwrap());
        let e = format!(
            "{:#}",
            read_deb_limited(PACKAGE, &deb, small(1 << 20, MAX_ENTRIES)).unwrap_err()
        );
        assert!(
            e.contains("hold more than 1048576 bytes (hard links count again)"),
            "{e}"
        );
    }

    #[test]
    fn too_many_entries_and_members_are_refused() {
        let names: Vec<String> = (0..20).map(|i| format!("./f{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let deb = deb_with("data.tar", &tests::tar_of(&files));
        let e = format!(
            "{:#}",
            read_deb_limited(PACKAGE, &deb, small(MAX_UNPACKED, 10)).unwrap_err()
        );
        assert!(e.contains("data.tar has more than 10 entries"), "{e}");
        let mut members = vec![("debian-binary", b"2.0\n".to_vec())];
        members.extend((0..MAX_AR_MEMBERS).map(|_| ("junk", Vec::new())));
        let e = format!(
            "{:#}",
            read_deb(PACKAGE, &tests::deb_of(&members)).unwrap_err()
        );
        assert!(e.contains("more than 16 members"), "{e}");
    }

    #[test]
    fn the_lock_sample_parses() {
        parse_lock(LOCK_SAMPLE).unwrap();
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn packages_index_arbitrary_text(text in any::<String>()) {
            index_and_resolve(&text);
        }

        #[test]
        fn packages_index_mutated(text in mutated_text(tests::INDEX)) {
            index_and_resolve(&text);
        }

        #[test]
        fn dependency_fields_and_versions_arbitrary(
            field in "[a-z0-9.+:~|,() <>=-]{0,40}",
            a in "[0-9a-z.+:~-]{0,12}",
            b in any::<String>(),
        ) {
            let _ = parse_deps(&field);
            let _ = version_cmp(&a, &b);
            prop_assert_eq!(version_cmp(&a, &a), Ordering::Equal);
        }

        #[test]
        fn debian_lock_arbitrary_text(text in any::<String>()) {
            if let Err(e) = parse_lock(&text) {
                clear_error(&e, LOCK_PATH)?;
            }
        }

        #[test]
        fn debian_lock_mutated(text in mutated_text(LOCK_SAMPLE)) {
            if let Err(e) = parse_lock(&text) {
                clear_error(&e, LOCK_PATH)?;
            }
        }
    }

    proptest! {
            #![proptest_config(hostile::config(256))]
            #[test]
            fn deb_arbitrary_bytes(bytes in hostile::bytes(2048)) {
                check_deb(&bytes)?;
                let mut ar = b"!<arch>\n".to_vec();
                ar.extend(bytes);
                check_deb(&ar)?;
            }

            #[test]
            fn deb_mutated(
                bytes in prop::sample::select(vec!["data.tar", "data.tar.gz", "data.tar.xz", "data.tar.zst"])
                    .prop_flat_map(|m| mutated(deb_with(m, &sample_data())))
            ) {
                check_deb(&bytes)?;
            }

            #[test]
            fn deb_data_tar_mutated(data in mutated(sample_data())) {
                check_deb(&deb_with("data.tar", &data))?;
            }
    }
}
