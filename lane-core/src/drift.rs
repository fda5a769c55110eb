//! `cargo xtask drift`: the curated dependency manifest checked against what
//! the binaries of an image really load.
//!
//! The pure core takes values and returns a value:
//! [`ImageFs`] (the merged root file system, built from layer tar streams with
//! OCI whiteouts applied), [`CuratedManifest`] (the packages the image
//! declares and their files), [`ProviderIndex`] (which package ships which
//! library file name: the hand-kept index over Debian's Contents index) and
//! [`RuntimeFacts`] (entrypoint, `LD_LIBRARY_PATH`) go in; [`ImageDrift`]
//! comes out. The dynamic loader is emulated inside the image only: the
//! host file system is never consulted.
//!
//! The adapter (`xtask::commands::drift`) builds the images, reads their OCI
//! layouts and the hand-kept index, calls [`analyse`], then asks Debian's
//! Contents index ([`contents_query`], `crate::contents`) about what is
//! missing and names the providers ([`name_providers`]). See docs/drift.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;

use anyhow::{Context, Result, bail};
use object::Endianness;
use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use serde::{Deserialize, Serialize};

use crate::contents::{ContentsQuery, Providers};

// ---------------------------------------------------------------------------
// The merged file system
// ---------------------------------------------------------------------------

/// One entry of the merged root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A regular file. `data` holds the bytes of files the analysis reads
    /// (ELF files, ld.so.conf, the dpkg database); `None` for other files.
    File {
        data: Option<Vec<u8>>,
    },
    Symlink {
        target: String,
    },
}

/// The root file system of an image: absolute path (`/usr/bin/x`) -> node.
/// The root `/` itself is implicit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFs {
    nodes: BTreeMap<String, Node>,
}

const MAX_SYMLINK_HOPS: usize = 40;

/// Normalises a tar or absolute path to `/a/b` (no `.`, no trailing `/`).
/// `..` is clamped at the root, as the kernel does for `/..`.
pub(crate) fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether the analysis needs a file's bytes: ELF files, the loader's
/// configuration, the dpkg database, installed Python distributions'
/// metadata, and Python sources outside the interpreter's and the
/// distributions' own trees (the application's).
fn keep_content(path: &str, head: &[u8]) -> bool {
    let dist_info =
        path.contains(".dist-info/") && (path.ends_with("/METADATA") || path.ends_with("/RECORD"));
    let app_source = path.ends_with(".py")
        && !path.starts_with("/usr/lib/python")
        && !path.starts_with("/usr/local/lib/python");
    head.starts_with(b"\x7fELF")
        || path == "/etc/ld.so.conf"
        || path.starts_with("/etc/ld.so.conf.d/")
        || path.starts_with("/var/lib/dpkg/")
        || dist_info
        || app_source
}

/// Most entries one layer's tar stream may hold (drift keeps every path).
pub const MAX_LAYER_ENTRIES: usize = 1_000_000;

/// Most bytes of one file drift holds in memory (ELF files, the loader's
/// and dpkg's files, Python metadata and sources); other files are skipped
/// unread.
pub const MAX_FILE_READ: u64 = 1 << 30;

impl ImageFs {
    pub fn new() -> ImageFs {
        ImageFs::default()
    }

    /// Inserts a node, creating missing parent directories; a non-directory
    /// replacing a directory removes what was below it.
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = normalise(path);
        if path == "/" {
            return;
        }
        let mut dir = String::new();
        let parent = parent_of(&path).to_string();
        for c in parent.split('/').filter(|c| !c.is_empty()) {
            dir.push('/');
            dir.push_str(c);
            match self.nodes.get(&dir) {
                Some(Node::Dir) => {}
                _ => {
                    self.remove_below(&dir);
                    self.nodes.insert(dir.clone(), Node::Dir);
                }
            }
        }
        if node != Node::Dir {
            self.remove_below(&path);
        }
        self.nodes.insert(path, node);
    }

    /// Removes `path` and everything below it.
    pub fn remove(&mut self, path: &str) {
        let path = normalise(path);
        self.remove_below(&path);
        self.nodes.remove(&path);
    }

    fn remove_below(&mut self, dir: &str) {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
    }

    /// Applies one uncompressed tar layer on top of what is there, the OCI
    /// way: whiteouts (`.wh.NAME`, `.wh..wh..opq`) first hide entries of the
    /// layers below, then the layer's own entries are added in order.
    pub fn apply_layer(&mut self, tar_stream: impl Read) -> Result<()> {
        self.apply_layer_limited(tar_stream, MAX_LAYER_ENTRIES, MAX_FILE_READ)
    }

    fn apply_layer_limited(
        &mut self,
        tar_stream: impl Read,
        max_entries: usize,
        max_file: u64,
    ) -> Result<()> {
        let mut archive = tar::Archive::new(tar_stream);
        let mut opaque = Vec::new();
        let mut whiteouts = Vec::new();
        let mut entries: Vec<(String, Node)> = Vec::new();
        for (n, entry) in archive
            .entries()
            .context("reading the layer's tar stream")?
            .enumerate()
        {
            if n >= max_entries {
                bail!("the layer has more than {max_entries} entries");
            }
            let mut entry = entry.context("reading a tar entry")?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let path = normalise(&raw);
            let name = file_name(&path);
            if name == ".wh..wh..opq" {
                opaque.push(parent_of(&path).to_string());
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                whiteouts.push(join(parent_of(&path), hidden));
                continue;
            }
            let kind = entry.header().entry_type();
            let node = match kind {
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Symlink => Node::Symlink {
                    target: entry
                        .link_name()?
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                },
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()?
                        .map(|l| normalise(&l.to_string_lossy()))
                        .unwrap_or_default();
                    // A hard link to an entry of this layer or of a lower one.
                    let found = entries
                        .iter()
                        .rev()
                        .find(|(p, _)| *p == target)
                        .map(|(_, n)| n.clone())
                        .or_else(|| self.nodes.get(&target).cloned());
                    found.unwrap_or(Node::File { data: None })
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    // The first bytes decide; only a kept file is read
                    // whole (and at most `max_file` bytes of it).
                    let mut data = Vec::new();
                    (&mut entry)
                        .take(4)
                        .read_to_end(&mut data)
                        .with_context(|| format!("reading {path} from the layer"))?;
                    let keep = keep_content(&path, &data);
                    if keep {
                        (&mut entry)
                            .take(max_file + 1 - data.len() as u64)
                            .read_to_end(&mut data)
                            .with_context(|| format!("reading {path} from the layer"))?;
                        if data.len() as u64 > max_file {
                            bail!(
                                "{path} in the layer is larger than {max_file} bytes, the most drift reads of one file"
                            );
                        }
                    }
                    Node::File {
                        data: keep.then_some(data),
                    }
                }
                // Devices, fifos: present, never loaded.
                _ => Node::File { data: None },
            };
            entries.push((path, node));
        }
        for dir in opaque {
            self.remove_below(&dir);
        }
        for path in whiteouts {
            self.remove(&path);
        }
        for (path, node) in entries {
            self.insert(&path, node);
        }
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&normalise(path))
    }

    /// Follows symlinks inside the image (absolute targets start at the
    /// image root) and returns the real path of an existing entry.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut todo: VecDeque<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let here = format!("/{}", cur.join("/"));
            match self.nodes.get(&here)? {
                Node::Dir => {}
                Node::File { .. } => {
                    if !todo.is_empty() {
                        return None;
                    }
                }
                Node::Symlink { target } => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return None;
                    }
                    cur.pop();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    for t in target.split('/').filter(|c| !c.is_empty()).rev() {
                        todo.push_front(t.to_string());
                    }
                }
            }
        }
        Some(format!("/{}", cur.join("/")))
    }

    /// The bytes of the regular file at `path` (symlinks followed).
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        match self.nodes.get(&self.resolve(path)?)? {
            Node::File { data: Some(d) } => Some(d),
            _ => None,
        }
    }

    pub fn read_text(&self, path: &str) -> Option<String> {
        self.read(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn is_file(&self, path: &str) -> bool {
        self.resolve(path)
            .and_then(|p| self.nodes.get(&p))
            .is_some_and(|n| matches!(n, Node::File { .. }))
    }

    /// Names directly below `dir` (symlinks in `dir` itself followed), sorted.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let Some(real) = self.resolve(dir) else {
            return Vec::new();
        };
        let prefix = if real == "/" {
            "/".to_string()
        } else {
            format!("{real}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect()
    }

    /// Every regular file whose bytes start with the ELF magic.
    pub fn elf_files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.nodes.iter().filter_map(|(p, n)| match n {
            Node::File { data: Some(d) } if d.starts_with(b"\x7fELF") => {
                Some((p.as_str(), d.as_slice()))
            }
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------
// ELF facts
// ---------------------------------------------------------------------------

/// What the dynamic loader reads from one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub class64: bool,
    pub little_endian: bool,
    pub machine: u16,
    pub file_type: u16,
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    pub soname: Option<String>,
    pub rpath: Vec<String>,
    pub runpath: Option<Vec<String>>,
    /// DT_FLAGS_1 has DF_1_PIE: a position-independent executable.
    pub pie: bool,
}

impl ElfInfo {
    fn compatible(&self, other: &ElfInfo) -> bool {
        self.class64 == other.class64
            && self.little_endian == other.little_endian
            && self.machine == other.machine
    }

    fn kind(&self) -> &'static str {
        match self.file_type {
            t if t == elf::ET_EXEC.0 => {
                if self.interpreter.is_none() && self.needed.is_empty() {
                    "static_executable"
                } else {
                    "executable"
                }
            }
            t if t == elf::ET_DYN.0 => {
                if self.interpreter.is_some() {
                    "executable"
                } else if self.pie && self.needed.is_empty() {
                    "static_executable"
                } else if self.pie {
                    "executable"
                } else {
                    "shared_library"
                }
            }
            t if t == elf::ET_REL.0 => "relocatable",
            t if t == elf::ET_CORE.0 => "core",
            _ => "other",
        }
    }

    fn machine_name(&self) -> String {
        match self.machine {
            m if m == elf::EM_X86_64.0 => "x86_64".into(),
            m if m == elf::EM_AARCH64.0 => "aarch64".into(),
            m if m == elf::EM_386.0 => "i386".into(),
            m if m == elf::EM_ARM.0 => "arm".into(),
            m if m == elf::EM_RISCV.0 => "riscv".into(),
            m if m == elf::EM_PPC64.0 => "ppc64".into(),
            m if m == elf::EM_S390.0 => "s390".into(),
            m => format!("em-{m}"),
        }
    }

    /// Debian's multiarch directory name for this class and machine.
    fn multiarch(&self) -> Option<&'static str> {
        match (self.machine, self.class64) {
            (m, true) if m == elf::EM_X86_64.0 => Some("x86_64-linux-gnu"),
            (m, true) if m == elf::EM_AARCH64.0 => Some("aarch64-linux-gnu"),
            (m, false) if m == elf::EM_386.0 => Some("i386-linux-gnu"),
            (m, false) if m == elf::EM_ARM.0 => Some("arm-linux-gnueabihf"),
            (m, true) if m == elf::EM_RISCV.0 => Some("riscv64-linux-gnu"),
            (m, true) if m == elf::EM_PPC64.0 => Some("powerpc64le-linux-gnu"),
            (m, true) if m == elf::EM_S390.0 => Some("s390x-linux-gnu"),
            _ => None,
        }
    }

    /// The program interpreter glibc uses for this machine.
    fn standard_interpreter(&self) -> Option<&'static str> {
        match (self.machine, self.class64) {
            (m, true) if m == elf::EM_X86_64.0 => Some("/lib64/ld-linux-x86-64.so.2"),
            (m, true) if m == elf::EM_AARCH64.0 => Some("/lib/ld-linux-aarch64.so.1"),
            (m, false) if m == elf::EM_386.0 => Some("/lib/ld-linux.so.2"),
            _ => None,
        }
    }

    /// The default search directories of glibc's loader as Debian builds it
    /// (`ld.so --help`: "system search path").
    fn default_dirs(&self) -> Vec<String> {
        let mut dirs = Vec::new();
        if let Some(m) = self.multiarch() {
            dirs.push(format!("/lib/{m}"));
            dirs.push(format!("/usr/lib/{m}"));
        }
        dirs.push("/lib".into());
        dirs.push("/usr/lib".into());
        dirs
    }
}

/// Parses the facts the loader needs; an error says why the file is not a
/// loadable ELF object (truncated, bad header, ...).
pub fn parse_elf(data: &[u8]) -> std::result::Result<ElfInfo, String> {
    match data.get(4) {
        Some(&c) if c == elf::ELFCLASS32.0 => parse_elf_as::<elf::FileHeader32<Endianness>>(data),
        Some(&c) if c == elf::ELFCLASS64.0 => parse_elf_as::<elf::FileHeader64<Endianness>>(data),
        Some(c) => Err(format!("unknown ELF class {c}")),
        None => Err("file too short for an ELF header".into()),
    }
}

fn parse_elf_as<H: FileHeader<Endian = Endianness>>(
    data: &[u8],
) -> std::result::Result<ElfInfo, String> {
    let err = |what: &str, e: object::read::Error| format!("{what}: {e}");
    let header = H::parse(data).map_err(|e| err("invalid ELF header", e))?;
    let endian = header.endian().map_err(|e| err("invalid ELF header", e))?;
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| err("invalid program headers", e))?;
    // The section table is not used by the loader, but a file cut short
    // loses it first: checking it finds truncated files.
    header
        .sections(endian, data)
        .map_err(|e| err("invalid section headers", e))?;
    let mut interpreter = None;
    let mut dynamic = None;
    for ph in phdrs {
        let ty = ph.p_type(endian);
        let offset: u64 = ph.p_offset(endian).into();
        let filesz: u64 = ph.p_filesz(endian).into();
        if ty == elf::PT_LOAD && offset.saturating_add(filesz) > data.len() as u64 {
            return Err(format!(
                "truncated: a loadable segment ends at byte {} but the file has {} bytes",
                offset.saturating_add(filesz),
                data.len()
            ));
        }
        if let Some(i) = ph
            .interpreter(endian, data)
            .map_err(|e| err("invalid PT_INTERP", e))?
        {
            interpreter = Some(String::from_utf8_lossy(i).into_owned());
        }
        if let Some(d) = ph
            .dynamic(endian, data)
            .map_err(|e| err("invalid PT_DYNAMIC", e))?
        {
            dynamic = Some(d);
        }
    }
    let mut info = ElfInfo {
        class64: header.is_class_64(),
        little_endian: header.is_little_endian(),
        machine: header.e_machine(endian).0,
        file_type: header.e_type(endian).0,
        interpreter,
        needed: Vec::new(),
        soname: None,
        rpath: Vec::new(),
        runpath: None,
        pie: false,
    };
    let Some(dynamic) = dynamic else {
        return Ok(info);
    };
    // DT_STRTAB is an address: map it to a file offset through PT_LOAD.
    let mut strtab = None;
    let mut strsz = None;
    for d in dynamic {
        let tag = d.d_tag(endian);
        let val: u64 = d.d_val(endian).into();
        if tag == elf::DT_NULL {
            break;
        }
        if tag == elf::DT_STRTAB {
            strtab = Some(val);
        } else if tag == elf::DT_STRSZ {
            strsz = Some(val);
        }
    }
    let strings: &[u8] = match (strtab, strsz) {
        (Some(addr), Some(size)) => {
            let offset = phdrs
                .iter()
                .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
                .find_map(|ph| {
                    let vaddr: u64 = ph.p_vaddr(endian).into();
                    let filesz: u64 = ph.p_filesz(endian).into();
                    let off: u64 = ph.p_offset(endian).into();
                    (addr >= vaddr && addr < vaddr.saturating_add(filesz))
                        .then(|| off + (addr - vaddr))
                })
                .ok_or("DT_STRTAB points outside every loadable segment")?;
            let end = offset.saturating_add(size);
            data.get(offset as usize..end as usize)
                .ok_or("truncated: the dynamic string table is past the end of the file")?
        }
        _ => &[],
    };
    let string = |val: u64| -> std::result::Result<String, String> {
        let rest = strings
            .get(val as usize..)
            .ok_or("a dynamic entry points outside the string table")?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated string in the dynamic string table")?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let split = |s: String| -> Vec<String> {
        s.split(':')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    for d in dynamic {
        let tag = d.d_tag(endian);
        let val: u64 = d.d_val(endian).into();
        if tag == elf::DT_NULL {
            break;
        }
        if tag == elf::DT_NEEDED {
            info.needed.push(string(val)?);
        } else if tag == elf::DT_SONAME {
            info.soname = Some(string(val)?);
        } else if tag == elf::DT_RPATH {
            info.rpath.extend(split(string(val)?));
        } else if tag == elf::DT_FLAGS_1 {
            info.pie = val & elf::DF_1_PIE.0 != 0;
        } else if tag == elf::DT_RUNPATH {
            info.runpath
                .get_or_insert_with(Vec::new)
                .extend(split(string(val)?));
        }
    }
    Ok(info)
}

// ---------------------------------------------------------------------------
// Curated manifest and provider index
// ---------------------------------------------------------------------------

/// The packages an image declares, with the files each one brings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CuratedManifest {
    pub packages: Vec<CuratedPackage>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CuratedPackage {
    pub name: String,
    pub version: Option<String>,
    /// Absolute paths inside the image.
    pub files: Vec<String>,
}

/// Fields of deb822 stanzas (`Package: x`), one map per stanza.
fn deb822(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue; // continuation of a multi-line field
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A file list: `/abs/path` per line (dpkg's `info/PKG.list`), or
/// `MD5  rel/path` per line (`PKG.md5sums`).
fn file_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() {
                return None;
            }
            if l.starts_with('/') {
                return Some(normalise(l));
            }
            let (_, path) = l.split_once(char::is_whitespace)?;
            Some(normalise(path.trim()))
        })
        .filter(|p| p != "/" && p != "/.")
        .collect()
}

/// Suffixes of files next to the stanzas in status.d that are not stanzas.
const COMPANIONS: &[&str] = &[
    ".list",
    ".md5sums",
    ".conffiles",
    ".triggers",
    ".shlibs",
    ".symbols",
    ".preinst",
    ".postinst",
    ".prerm",
    ".postrm",
];

impl CuratedManifest {
    /// Reads the dpkg database of the image: one stanza file per package in
    /// `/var/lib/dpkg/status.d/` with its file list in `status.d/PKG.list`
    /// (or `PKG.md5sums`), and the classic `/var/lib/dpkg/status` with
    /// `/var/lib/dpkg/info/PKG[:ARCH].list`.
    pub fn from_image(fs: &ImageFs) -> CuratedManifest {
        let mut packages: BTreeMap<String, CuratedPackage> = BTreeMap::new();
        let mut add = |stanza: &BTreeMap<String, String>, lists: &[String]| {
            let Some(name) = stanza.get("package") else {
                return;
            };
            let arch = stanza.get("architecture").cloned().unwrap_or_default();
            let p = packages
                .entry(name.clone())
                .or_insert_with(|| CuratedPackage {
                    name: name.clone(),
                    ..CuratedPackage::default()
                });
            p.version = p.version.take().or_else(|| stanza.get("version").cloned());
            for base in lists {
                for candidate in [
                    base.replace("{pkg}", name),
                    base.replace("{pkg}", &format!("{name}:{arch}")),
                ] {
                    if let Some(text) = fs.read_text(&candidate) {
                        p.files.extend(file_list(&text));
                    }
                }
            }
        };
        let dir = "/var/lib/dpkg/status.d";
        for entry in fs.list(dir) {
            // Companion files (PKG.list, PKG.md5sums, ...); package names
            // may contain dots themselves (libbz2-1.0).
            if COMPANIONS.iter().any(|c| entry.ends_with(c)) || entry.starts_with('.') {
                continue;
            }
            let Some(text) = fs.read_text(&join(dir, &entry)) else {
                continue;
            };
            for stanza in deb822(&text) {
                let lists = [
                    format!("{dir}/{entry}.list"),
                    format!("{dir}/{entry}.md5sums"),
                    format!("{dir}/{{pkg}}.list"),
                    format!("{dir}/{{pkg}}.md5sums"),
                ];
                add(&stanza, &lists);
            }
        }
        if let Some(text) = fs.read_text("/var/lib/dpkg/status") {
            for stanza in deb822(&text) {
                let installed = stanza
                    .get("status")
                    .is_none_or(|s| s.ends_with(" installed"));
                if installed {
                    add(&stanza, &["/var/lib/dpkg/info/{pkg}.list".to_string()]);
                }
            }
        }
        let mut packages: Vec<CuratedPackage> = packages.into_values().collect();
        for p in &mut packages {
            p.files.sort();
            p.files.dedup();
        }
        CuratedManifest { packages }
    }
}

/// Which packages ship a library, by file name (`libz.so.1` -> `zlib1g`):
/// names the package that would provide a missing library.
///
/// Two sources: the hand-kept `libraries` (`lockfiles/library-index.toml`),
/// which overrides, and Debian's Contents index (`contents`, filled by the
/// adapter for the names [`contents_query`] asks about). The file lists of
/// the curated manifest are consulted as well.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderIndex {
    #[serde(default)]
    pub libraries: BTreeMap<String, BTreeSet<String>>,
    /// What Debian's Contents index says ships each file name.
    #[serde(skip)]
    pub contents: Providers,
    /// Whether Debian's Contents index was read.
    #[serde(skip)]
    pub contents_state: ContentsState,
}

/// Whether Debian's Contents index named the providers of an image's
/// missing files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentsState {
    /// Not consulted (nothing was missing, or the caller did not ask).
    #[default]
    NotConsulted,
    /// apt keeps no Contents index for the image's architecture.
    Absent,
    /// Read.
    Consulted,
}

impl ProviderIndex {
    /// Parses `lockfiles/library-index.toml` (see docs/drift.md).
    pub fn parse(text: &str, origin: &str) -> Result<ProviderIndex> {
        toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{origin}: {}; expected [libraries] with \"libNAME.so.N\" = [\"package\", ...]",
                e.message()
            )
        })
    }

    fn providers(&self, manifest: &CuratedManifest, library: &str) -> Vec<String> {
        let mut out: BTreeSet<String> = match self.libraries.get(library) {
            Some(hand_kept) => hand_kept.clone(),
            None => self.contents.get(library).cloned().unwrap_or_default(),
        };
        for p in &manifest.packages {
            if p.files.iter().any(|f| file_name(f) == library) {
                out.insert(p.name.clone());
            }
        }
        out.into_iter().collect()
    }
}

/// The paths to look up in Debian's Contents index for what `drift` found
/// missing: every missing library in each directory the loader searched
/// (a name with a `/` at that path), every missing interpreter at its path.
/// Names the hand-kept index lists are not asked for (it overrides).
pub fn contents_query(drift: &ImageDrift, index: &ProviderIndex) -> ContentsQuery {
    let mut q = ContentsQuery::new();
    for m in &drift.missing_libraries {
        if index.libraries.contains_key(&m.library) {
            continue;
        }
        if m.library.contains('/') {
            q.want(file_name(&m.library), &normalise(&m.library));
            continue;
        }
        for dir in &m.searched {
            q.want(&m.library, &join(&normalise(dir), &m.library));
        }
    }
    for m in &drift.missing_interpreters {
        let name = file_name(&m.interpreter);
        if !index.libraries.contains_key(name) {
            q.want(name, &normalise(&m.interpreter));
        }
    }
    q
}

/// Names the packages that would provide what is missing, again, from
/// `index` (after the adapter filled in Debian's Contents index).
pub fn name_providers(drift: &mut ImageDrift, manifest: &CuratedManifest, index: &ProviderIndex) {
    for m in &mut drift.missing_libraries {
        m.providers = index.providers(manifest, &m.library);
    }
    for m in &mut drift.missing_interpreters {
        m.providers = index.providers(manifest, file_name(&m.interpreter));
    }
    drift.contents_index = index.contents_state;
}

/// What the image configuration tells the loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFacts {
    /// The program the container starts (first of Entrypoint, else of Cmd).
    pub entrypoint: Option<String>,
    /// `LD_LIBRARY_PATH` from the config's Env.
    pub ld_library_path: Vec<String>,
    /// `PYTHONPATH` from the config's Env.
    pub python_path: Vec<String>,
}

impl RuntimeFacts {
    pub fn from_config(entrypoint: &[String], cmd: &[String], env: &[String]) -> RuntimeFacts {
        let entrypoint = entrypoint.first().or(cmd.first()).cloned();
        let ld_library_path = env
            .iter()
            .filter_map(|e| e.strip_prefix("LD_LIBRARY_PATH="))
            .flat_map(|v| v.split([':', ';']))
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        let python_path = env
            .iter()
            .filter_map(|e| e.strip_prefix("PYTHONPATH="))
            .flat_map(|v| v.split(':'))
            .filter(|d| d.starts_with('/'))
            .map(str::to_string)
            .collect();
        RuntimeFacts {
            entrypoint,
            ld_library_path,
            python_path,
        }
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// The drift of several images; `ok` when none has a missing library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReport {
    pub images: Vec<ImageDrift>,
}

/// The drift of one image: a value the provenance can carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDrift {
    pub image: String,
    /// No missing library and no missing interpreter.
    pub ok: bool,
    /// Every ELF object, with its direct needs as the loader resolves them
    /// when the object itself is started (executables) or loaded (libraries).
    pub objects: Vec<ElfObject>,
    /// Each needed library nothing in the image provides.
    pub missing_libraries: Vec<MissingLibrary>,
    /// Each PT_INTERP that is not in the image.
    pub missing_interpreters: Vec<MissingInterpreter>,
    /// Files with the ELF magic the loader could not load.
    pub malformed: Vec<MalformedElf>,
    /// Every curated package and what loads its files.
    pub packages: Vec<PackageUse>,
    /// Curated packages nothing needs.
    pub unused_packages: Vec<String>,
    /// Whether Debian's Contents index named the `providers` above.
    #[serde(default)]
    pub contents_index: ContentsState,
    /// The Python import drift of an image with a `[python]` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<crate::python::report::PythonDrift>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElfObject {
    pub path: String,
    /// `executable`, `static_executable`, `shared_library`, `relocatable`, ...
    pub kind: String,
    pub class: String,
    pub machine: String,
    /// The curated package that ships this file, if any.
    pub package: Option<String>,
    pub interpreter: Option<Interpreter>,
    pub needed: Vec<Needed>,
    /// Packages of everything this object loads, transitively (not its own).
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    pub path: String,
    pub found: bool,
    /// The real path after following symlinks inside the image.
    pub resolved: Option<String>,
    pub package: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needed {
    pub name: String,
    /// Path the loader opens (a search directory joined with the name).
    pub resolved: Option<String>,
    /// `loaded` (already in the process), `path` (name with a slash),
    /// `rpath`, `ld_library_path`, `runpath`, `ld.so.conf`, `default`.
    pub via: Option<String>,
    pub package: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingLibrary {
    /// The program or library being started/loaded.
    pub binary: String,
    /// The object whose DT_NEEDED names the library (the binary or one of
    /// the libraries it loads).
    pub needed_by: String,
    pub library: String,
    /// Why: `not found` or the reason the found file cannot be loaded.
    pub reason: String,
    /// Packages that ship a file of this name (provider index and manifest).
    pub providers: Vec<String>,
    /// The directories searched, in order.
    pub searched: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingInterpreter {
    pub binary: String,
    pub interpreter: String,
    pub providers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MalformedElf {
    pub path: String,
    pub error: String,
    pub package: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageUse {
    pub name: String,
    pub version: Option<String>,
    /// Files of the package's list that are in the image.
    pub files_present: usize,
    pub files_listed: usize,
    /// Objects outside the package that load one of its files, and
    /// `<entrypoint>` when the image starts one of its programs.
    pub used_by: Vec<String>,
}

// ---------------------------------------------------------------------------
// The loader emulation
// ---------------------------------------------------------------------------

/// One object in an emulated process.
struct Loaded {
    /// Path the object was opened under.
    path: String,
    /// Real path inside the image.
    real: String,
    /// Names it answers to (requested names and DT_SONAME).
    names: BTreeSet<String>,
    loader: Option<usize>,
}

struct Analysis<'a> {
    fs: &'a ImageFs,
    elves: BTreeMap<String, std::result::Result<ElfInfo, String>>,
    conf_dirs: Vec<String>,
    runtime: &'a RuntimeFacts,
    owner: BTreeMap<String, String>,
}

enum Found {
    Ok { path: String, real: String },
    Unloadable { path: String, reason: String },
    Absent,
}

impl<'a> Analysis<'a> {
    fn info(&self, real: &str) -> Option<&ElfInfo> {
        self.elves.get(real).and_then(|r| r.as_ref().ok())
    }

    fn owner_of(&self, path: &str) -> Option<String> {
        self.owner.get(path).cloned().or_else(|| {
            self.fs
                .resolve(path)
                .and_then(|r| self.owner.get(&r).cloned())
        })
    }

    /// Opens `candidate` the way ld.so's open_verify does: a missing file or
    /// an ELF of another class/machine is skipped; anything else that is not
    /// a loadable ELF stops the search with an error.
    fn try_open(&self, candidate: &str, want: &ElfInfo) -> Option<Found> {
        let real = self.fs.resolve(candidate)?;
        if !self.fs.is_file(&real) {
            return None;
        }
        match self.elves.get(&real) {
            Some(Ok(info)) if info.compatible(want) => Some(Found::Ok {
                path: candidate.to_string(),
                real,
            }),
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(Found::Unloadable {
                path: candidate.to_string(),
                reason: format!("{candidate} cannot be loaded: {e}"),
            }),
            None => Some(Found::Unloadable {
                path: candidate.to_string(),
                reason: format!("{candidate} is not an ELF file"),
            }),
        }
    }

    fn expand(&self, dir: &str, origin: &str, info: &ElfInfo) -> Option<String> {
        let lib = match info.multiarch() {
            Some(m) => format!("lib/{m}"),
            None => "lib".to_string(),
        };
        let platform = info.machine_name();
        let d = dir
            .replace("${ORIGIN}", origin)
            .replace("$ORIGIN", origin)
            .replace("${LIB}", &lib)
            .replace("$LIB", &lib)
            .replace("${PLATFORM}", &platform)
            .replace("$PLATFORM", &platform);
        // Relative entries depend on the working directory: not followed.
        d.starts_with('/').then(|| normalise(&d))
    }

    /// Runs the loader on `top`: interpreter, then DT_NEEDED breadth-first.
    fn load(&self, top: &str, info: &ElfInfo) -> Process {
        let mut p = Process::default();
        let origin_of = |path: &str| parent_of(path).to_string();
        let mut objects: Vec<Loaded> = vec![Loaded {
            path: top.to_string(),
            real: top.to_string(),
            names: info.soname.iter().cloned().collect(),
            loader: None,
        }];
        // The interpreter is in every process; a library alone is checked
        // as if the standard interpreter of its machine loaded it.
        let interp = info.interpreter.clone().or_else(|| {
            (info.kind() == "shared_library")
                .then(|| info.standard_interpreter().map(str::to_string))
                .flatten()
        });
        if let Some(interp) = interp {
            let real = self.fs.resolve(&interp).filter(|r| self.fs.is_file(r));
            if let Some(real) = &real {
                let mut names: BTreeSet<String> = [file_name(&interp).to_string()].into();
                names.extend(self.info(real).and_then(|i| i.soname.clone()));
                objects.push(Loaded {
                    path: interp.clone(),
                    real: real.clone(),
                    names,
                    loader: None,
                });
            }
            if info.interpreter.is_some() {
                p.interpreter = Some(Interpreter {
                    package: real.as_deref().and_then(|_| self.owner_of(&interp)),
                    path: interp,
                    found: real.is_some(),
                    resolved: real,
                });
            }
        }
        let mut queue: VecDeque<usize> = [0].into();
        while let Some(i) = queue.pop_front() {
            let Some(oinfo) = self.info(&objects[i].real).cloned() else {
                continue;
            };
            let origin = if i == 0 {
                origin_of(&objects[i].real)
            } else {
                origin_of(&objects[i].path)
            };
            for name in &oinfo.needed {
                let (found, via, searched) = self.search(&objects, i, &oinfo, &origin, name);
                let needed_by = objects[i].path.clone();
                let record = |p: &mut Process, resolved: Option<String>, via: Option<&str>| {
                    if i == 0 {
                        p.needed.push(Needed {
                            name: name.clone(),
                            package: resolved.as_deref().and_then(|r| self.owner_of(r)),
                            resolved,
                            via: via.map(str::to_string),
                        });
                    }
                };
                match found {
                    Found::Ok { path, real } => {
                        if let Some(j) = objects.iter().position(|o| o.real == real) {
                            objects[j].names.insert(name.clone());
                            record(&mut p, Some(objects[j].path.clone()), Some(via));
                            continue;
                        }
                        record(&mut p, Some(path.clone()), Some(via));
                        let mut names: BTreeSet<String> = [name.clone()].into();
                        names.extend(self.info(&real).and_then(|i| i.soname.clone()));
                        objects.push(Loaded {
                            path,
                            real,
                            names,
                            loader: Some(i),
                        });
                        queue.push_back(objects.len() - 1);
                    }
                    Found::Unloadable { path, reason } => {
                        record(&mut p, Some(path), None);
                        p.missing.push((needed_by, name.clone(), reason, searched));
                    }
                    Found::Absent => {
                        record(&mut p, None, None);
                        p.missing
                            .push((needed_by, name.clone(), "not found".into(), searched));
                    }
                }
            }
        }
        p.loaded = objects.into_iter().skip(1).map(|o| o.real).collect();
        p
    }

    fn search(
        &self,
        objects: &[Loaded],
        i: usize,
        info: &ElfInfo,
        origin: &str,
        name: &str,
    ) -> (Found, &'static str, Vec<String>) {
        if name.contains('/') {
            let path = normalise(name);
            let found = self.try_open(&path, info).unwrap_or(Found::Absent);
            if let Found::Ok { real, .. } = &found
                && let Some(o) = objects.iter().find(|o| &o.real == real)
            {
                return (
                    Found::Ok {
                        path: o.path.clone(),
                        real: real.clone(),
                    },
                    "loaded",
                    vec![],
                );
            }
            return (found, "path", vec![parent_of(&path).to_string()]);
        }
        if let Some(o) = objects.iter().find(|o| o.names.contains(name)) {
            return (
                Found::Ok {
                    path: o.path.clone(),
                    real: o.real.clone(),
                },
                "loaded",
                vec![],
            );
        }
        let mut dirs: Vec<(String, &'static str)> = Vec::new();
        // DT_RPATH of the object and of its loaders, unless it has DT_RUNPATH.
        if info.runpath.is_none() {
            let mut at = Some(i);
            while let Some(k) = at {
                if let Some(kinfo) = self.info(&objects[k].real)
                    && kinfo.runpath.is_none()
                {
                    let korigin = if k == 0 {
                        parent_of(&objects[k].real).to_string()
                    } else {
                        parent_of(&objects[k].path).to_string()
                    };
                    for d in &kinfo.rpath {
                        if let Some(d) = self.expand(d, &korigin, kinfo) {
                            dirs.push((d, "rpath"));
                        }
                    }
                }
                at = objects[k].loader;
            }
        }
        for d in &self.runtime.ld_library_path {
            if let Some(d) = self.expand(d, origin, info) {
                dirs.push((d, "ld_library_path"));
            }
        }
        for d in info.runpath.iter().flatten() {
            if let Some(d) = self.expand(d, origin, info) {
                dirs.push((d, "runpath"));
            }
        }
        for d in &self.conf_dirs {
            dirs.push((d.clone(), "ld.so.conf"));
        }
        for d in info.default_dirs() {
            dirs.push((d, "default"));
        }
        let mut searched = Vec::new();
        for (d, via) in dirs {
            if searched.contains(&d) {
                continue;
            }
            let candidate = join(&d, name);
            searched.push(d);
            if let Some(found) = self.try_open(&candidate, info) {
                return (found, via, searched);
            }
        }
        (Found::Absent, "", searched)
    }
}

#[derive(Default)]
struct Process {
    interpreter: Option<Interpreter>,
    needed: Vec<Needed>,
    /// (needed_by, library, reason, searched)
    missing: Vec<(String, String, String, Vec<String>)>,
    /// Real paths of every object loaded besides the top one.
    loaded: Vec<String>,
}

/// ld.so.conf directories, `include` globs expanded, in file order.
pub fn ld_so_conf_dirs(fs: &ImageFs) -> Vec<String> {
    let mut out = Vec::new();
    read_conf(fs, "/etc/ld.so.conf", 0, &mut out);
    let mut seen = BTreeSet::new();
    out.retain(|d| seen.insert(d.clone()));
    out
}

fn read_conf(fs: &ImageFs, path: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 16 {
        return;
    }
    let Some(text) = fs.read_text(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("include")
            && rest.starts_with([' ', '\t'])
        {
            for pattern in rest.split_whitespace() {
                let pattern = if pattern.starts_with('/') {
                    pattern.to_string()
                } else {
                    join(parent_of(path), pattern)
                };
                let dir = parent_of(&pattern).to_string();
                let glob = file_name(&pattern).to_string();
                for name in fs.list(&dir) {
                    if wildcard(&glob, &name) {
                        read_conf(fs, &join(&dir, &name), depth + 1, out);
                    }
                }
            }
            continue;
        }
        if line.starts_with("hwcap") {
            continue;
        }
        for d in line.split([' ', '\t', ':', ',']).filter(|d| !d.is_empty()) {
            let d = d.split('=').next().unwrap_or(d);
            if d.starts_with('/') {
                out.push(normalise(d));
            }
        }
    }
}

/// `*` and `?` glob matching of one path component.
fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Checks every ELF object of the image against the loader's rules and the
/// curated manifest.
pub fn analyse(
    image: &str,
    fs: &ImageFs,
    manifest: &CuratedManifest,
    index: &ProviderIndex,
    runtime: &RuntimeFacts,
) -> ImageDrift {
    let elves: BTreeMap<String, _> = fs
        .elf_files()
        .map(|(p, d)| (p.to_string(), parse_elf(d)))
        .collect();
    // File -> package, by listed path and by real path.
    // Listed paths first: a package that lists a symlink (python3-minimal's
    // /usr/bin/python3) must not take the file it points at from the
    // package that lists the file itself.
    let mut owner = BTreeMap::new();
    for p in &manifest.packages {
        for f in &p.files {
            owner.entry(f.clone()).or_insert_with(|| p.name.clone());
        }
    }
    for p in &manifest.packages {
        for f in &p.files {
            if let Some(real) = fs.resolve(f) {
                owner.entry(real).or_insert_with(|| p.name.clone());
            }
        }
    }
    let a = Analysis {
        fs,
        elves,
        conf_dirs: ld_so_conf_dirs(fs),
        runtime,
        owner,
    };
    let mut drift = ImageDrift {
        image: image.to_string(),
        ..ImageDrift::default()
    };
    let mut used_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(ep) = &runtime.entrypoint
        && let Some(pkg) = a.owner_of(ep)
    {
        used_by
            .entry(pkg)
            .or_default()
            .insert("<entrypoint>".into());
    }
    for (path, parsed) in &a.elves {
        let package = a.owner_of(path);
        let info = match parsed {
            Ok(info) => info,
            Err(error) => {
                drift.malformed.push(MalformedElf {
                    path: path.clone(),
                    error: error.clone(),
                    package,
                });
                continue;
            }
        };
        let kind = info.kind();
        let analysed = matches!(kind, "executable" | "static_executable" | "shared_library");
        let process = if analysed {
            a.load(path, info)
        } else {
            Process::default()
        };
        if let Some(i) = &process.interpreter
            && !i.found
        {
            drift.missing_interpreters.push(MissingInterpreter {
                binary: path.clone(),
                interpreter: i.path.clone(),
                providers: index.providers(manifest, file_name(&i.path)),
            });
        }
        for (needed_by, library, reason, searched) in process.missing {
            drift.missing_libraries.push(MissingLibrary {
                binary: path.clone(),
                needed_by,
                providers: index.providers(manifest, &library),
                library,
                reason,
                searched,
            });
        }
        let mut depends_on = BTreeSet::new();
        for real in &process.loaded {
            if let Some(pkg) = a.owner_of(real)
                && Some(&pkg) != package.as_ref()
            {
                used_by.entry(pkg.clone()).or_default().insert(path.clone());
                depends_on.insert(pkg);
            }
        }
        drift.objects.push(ElfObject {
            path: path.clone(),
            kind: kind.to_string(),
            class: if info.class64 { "elf64" } else { "elf32" }.to_string(),
            machine: info.machine_name(),
            package,
            interpreter: process.interpreter,
            needed: process.needed,
            depends_on: depends_on.into_iter().collect(),
        });
    }
    for p in &manifest.packages {
        let users: Vec<String> = used_by
            .get(&p.name)
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default();
        if users.is_empty() {
            drift.unused_packages.push(p.name.clone());
        }
        drift.packages.push(PackageUse {
            name: p.name.clone(),
            version: p.version.clone(),
            files_present: p.files.iter().filter(|f| fs.is_file(f)).count(),
            files_listed: p.files.len(),
            used_by: users,
        });
    }
    drift.ok = drift.missing_libraries.is_empty() && drift.missing_interpreters.is_empty();
    drift.contents_index = index.contents_state;
    drift
}

// ---------------------------------------------------------------------------
// Policy and adapter
// ---------------------------------------------------------------------------

/// What makes `drift` fail besides missing libraries and interpreters.
#[derive(Debug, Clone, Default)]
pub struct DriftPolicy {
    pub fail_on_unused: bool,
    /// Packages allowed to be unused (data-only packages, for example).
    pub allow_unused: BTreeSet<String>,
}

/// Every failure of the report under the policy, one line each.
pub fn failures(report: &DriftReport, policy: &DriftPolicy) -> Vec<String> {
    let mut out = Vec::new();
    for i in &report.images {
        for m in &i.missing_interpreters {
            out.push(format!(
                "image {}: {} needs the program interpreter {}, which is not in the image{}",
                i.image,
                m.binary,
                m.interpreter,
                provided_by(&m.providers, i.contents_index)
            ));
        }
        for m in &i.missing_libraries {
            let via = if m.needed_by == m.binary {
                String::new()
            } else {
                format!(" (through {})", m.needed_by)
            };
            out.push(format!(
                "image {}: {} needs {}{via}: {}{}",
                i.image,
                m.binary,
                m.library,
                m.reason,
                provided_by(&m.providers, i.contents_index)
            ));
        }
        if let Some(py) = &i.python {
            out.extend(py.failures(&i.image));
        }
        if policy.fail_on_unused {
            for p in &i.unused_packages {
                if !policy.allow_unused.contains(p) {
                    out.push(format!(
                        "image {}: curated package {p} is not needed by any binary; remove it from the image's package list or allow it with --allow-unused {p}",
                        i.image
                    ));
                }
            }
        }
    }
    out
}

/// The end of a finding's line: the package to add, or why none is named.
pub fn provided_by(providers: &[String], contents: ContentsState) -> String {
    if providers.is_empty() {
        match contents {
            ContentsState::NotConsulted => {
                "; no known package provides it, add the file to the image".into()
            }
            ContentsState::Consulted => {
                "; no Debian package of this machine's apt sources ships it where the loader looks (Contents index), add the file to the image".into()
            }
            ContentsState::Absent => {
                "; the package that ships it cannot be named: Debian's Contents index is not on this machine (get it with `apt-get install apt-file && apt-get update`, or name the package in lockfiles/library-index.toml)".into()
            }
        }
    } else {
        format!(
            "; it is provided by package {}: add it to the image's curated package list",
            providers.join(" or ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers() {
        let mut fs = ImageFs::new();
        let lower = tar(&[
            ("etc/", D, b"", ""),
            ("etc/ld.so.conf", F, b"/a\n", ""),
            ("etc/gone", F, b"", ""),
            ("opt/app/old", F, b"", ""),
            ("opt/app/sub/x", F, b"", ""),
        ]);
        fs.apply_layer(lower.as_slice()).unwrap();
        let upper = tar(&[
            ("etc/.wh.gone", F, b"", ""),
            ("opt/app/.wh..wh..opq", F, b"", ""),
            ("opt/app/new", F, b"", ""),
        ]);
        fs.apply_layer(upper.as_slice()).unwrap();
        assert!(fs.get("/etc/gone").is_none());
        assert!(fs.get("/opt/app/old").is_none());
        assert!(fs.get("/opt/app/sub/x").is_none());
        assert!(fs.get("/opt/app/new").is_some());
        assert_eq!(fs.read_text("/etc/ld.so.conf").as_deref(), Some("/a\n"));
    }

    #[test]
    fn hard_links_share_the_content_of_their_target() {
        let mut fs = ImageFs::new();
        let layer = tar(&[
            ("usr/bin/a", F, b"\x7fELF-ish", ""),
            ("usr/bin/b", tar::EntryType::Link, b"", "usr/bin/a"),
            ("usr/bin/text", F, b"not kept", ""),
        ]);
        fs.apply_layer(layer.as_slice()).unwrap();
        assert_eq!(fs.read("/usr/bin/b"), Some(&b"\x7fELF-ish"[..]));
        assert!(fs.is_file("/usr/bin/text"));
        assert_eq!(fs.read("/usr/bin/text"), None);
        let elves: Vec<&str> = fs.elf_files().map(|(p, _)| p).collect();
        assert_eq!(elves, ["/usr/bin/a", "/usr/bin/b"]);
    }

    #[test]
    fn symlinks_resolve_inside_the_image_only() {
        let mut fs = ImageFs::new();
        let layer = tar(&[
            ("lib", S, b"", "usr/lib"),
            ("usr/lib/x86_64-linux-gnu/libz.so.1.2", F, b"", ""),
            ("usr/lib/x86_64-linux-gnu/libz.so.1", S, b"", "libz.so.1.2"),
            ("lib64", S, b"", "/../../usr/lib"),
            ("loop", S, b"", "/loop"),
            ("out", S, b"", "/etc/passwd"),
        ]);
        fs.apply_layer(layer.as_slice()).unwrap();
        assert_eq!(
            fs.resolve("/lib/x86_64-linux-gnu/libz.so.1").as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libz.so.1.2")
        );
        assert_eq!(
            fs.resolve("/lib64/x86_64-linux-gnu/libz.so.1").as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libz.so.1.2")
        );
        assert_eq!(fs.resolve("/loop"), None);
        // /etc/passwd exists on the host, not in the image.
        assert_eq!(fs.resolve("/out"), None);
    }

    #[test]
    fn ld_so_conf_includes_are_expanded_in_order() {
        let mut fs = ImageFs::new();
        let layer = tar(&[
            (
                "etc/ld.so.conf",
                F,
                b"# comment\n/first\ninclude /etc/ld.so.conf.d/*.conf\n/last\n",
                "",
            ),
            ("etc/ld.so.conf.d/b.conf", F, b"/b1:/b2\n", ""),
            ("etc/ld.so.conf.d/a.conf", F, b"/a # trailing\n", ""),
            ("etc/ld.so.conf.d/skip.txt", F, b"/nope\n", ""),
        ]);
        fs.apply_layer(layer.as_slice()).unwrap();
        assert_eq!(
            ld_so_conf_dirs(&fs),
            ["/first", "/a", "/b1", "/b2", "/last"]
        );
    }

    #[test]
    fn garbage_after_the_elf_magic_is_an_error_not_a_panic() {
        for data in [
            &b"\x7fELF"[..],
            b"\x7fELF\x02\x01\x01garbage garbage garbage garbage garbage garbage",
            b"\x7fELF\x09",
        ] {
            assert!(parse_elf(data).is_err(), "{data:?}");
        }
    }

    #[test]
    fn manifest_reads_status_d_and_file_lists() {
        let mut fs = ImageFs::new();
        let layer = tar(&[
            (
                "var/lib/dpkg/status.d/zlib1g",
                F,
                b"Package: zlib1g\nVersion: 1:1.2.13\nArchitecture: amd64\n",
                "",
            ),
            (
                "var/lib/dpkg/status.d/zlib1g.list",
                F,
                b"/.\n/usr/lib/x86_64-linux-gnu/libz.so.1\n",
                "",
            ),
            (
                "var/lib/dpkg/status.d/libc6",
                F,
                b"Package: libc6\nVersion: 2.36\n",
                "",
            ),
            (
                "var/lib/dpkg/status.d/libc6.md5sums",
                F,
                b"0123  usr/lib/x86_64-linux-gnu/libc.so.6\n",
                "",
            ),
        ]);
        fs.apply_layer(layer.as_slice()).unwrap();
        let m = CuratedManifest::from_image(&fs);
        assert_eq!(
            m,
            CuratedManifest {
                packages: vec![
                    CuratedPackage {
                        name: "libc6".into(),
                        version: Some("2.36".into()),
                        files: vec!["/usr/lib/x86_64-linux-gnu/libc.so.6".into()],
                    },
                    CuratedPackage {
                        name: "zlib1g".into(),
                        version: Some("1:1.2.13".into()),
                        files: vec!["/usr/lib/x86_64-linux-gnu/libz.so.1".into()],
                    },
                ]
            }
        );
    }

    fn missing(library: &str, searched: &[&str]) -> MissingLibrary {
        MissingLibrary {
            binary: "/usr/bin/tool".into(),
            needed_by: "/usr/bin/tool".into(),
            library: library.into(),
            reason: "not found".into(),
            providers: vec![],
            searched: searched.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn contents_name_what_the_hand_kept_index_does_not() {
        let mut drift = ImageDrift {
            image: "tool".into(),
            missing_libraries: vec![
                missing(
                    "libz.so.1",
                    &["/lib/x86_64-linux-gnu", "/usr/lib//x86_64-linux-gnu/"],
                ),
                missing("libpinned.so.1", &["/lib"]),
                missing("/opt/libabs.so", &[]),
            ],
            missing_interpreters: vec![MissingInterpreter {
                binary: "/usr/bin/tool".into(),
                interpreter: "/lib64/ld-linux-x86-64.so.2".into(),
                providers: vec![],
            }],
            ..ImageDrift::default()
        };
        let mut index = ProviderIndex::parse(
            "[libraries]\n\"libpinned.so.1\" = [\"our-build\"]\n",
            "library-index.toml",
        )
        .unwrap();
        // Only what the override does not name is looked up, where the
        // loader looked.
        let contents = "\
lib/x86_64-linux-gnu/libz.so.1 libs/zlib1g
usr/lib/x86_64-linux-gnu/libz.so.1 libs/zlib-ng-compat
lib/libpinned.so.1 libs/debian-build
opt/libabs.so misc/absolute
lib64/ld-linux-x86-64.so.2 libs/libc6
usr/lib/x86_64-linux-gnu/elsewhere/libz.so.1 libs/not-searched
";
        let q = contents_query(&drift, &index);
        assert_eq!(
            q.names(),
            BTreeSet::from(["ld-linux-x86-64.so.2", "libabs.so", "libz.so.1"])
        );
        index.contents = q.scan(contents.as_bytes(), "Contents-amd64").unwrap();
        index.contents_state = ContentsState::Consulted;
        name_providers(&mut drift, &CuratedManifest::default(), &index);
        let providers: Vec<Vec<String>> = drift
            .missing_libraries
            .iter()
            .map(|m| m.providers.clone())
            .collect();
        assert_eq!(
            providers,
            [
                vec!["zlib-ng-compat".to_string(), "zlib1g".to_string()],
                vec!["our-build".to_string()],
                vec![],
            ]
        );
        assert_eq!(drift.missing_interpreters[0].providers, ["libc6"]);
        assert_eq!(drift.contents_index, ContentsState::Consulted);
        let report = DriftReport {
            images: vec![drift.clone()],
        };
        let f = failures(&report, &DriftPolicy::default()).join("\n");
        assert!(
            f.contains(
                "needs libz.so.1: not found; it is provided by package zlib-ng-compat or zlib1g"
            ),
            "{f}"
        );
        assert!(
            f.contains("needs libpinned.so.1: not found; it is provided by package our-build"),
            "{f}"
        );
    }

    #[test]
    fn without_a_contents_index_the_message_says_how_to_get_it() {
        let drift = ImageDrift {
            image: "tool".into(),
            missing_libraries: vec![missing("libz.so.1", &["/lib"])],
            contents_index: ContentsState::Absent,
            ..ImageDrift::default()
        };
        let f = failures(
            &DriftReport {
                images: vec![drift.clone()],
            },
            &DriftPolicy::default(),
        );
        assert_eq!(f.len(), 1);
        assert!(
            f[0].contains("Debian's Contents index is not on this machine"),
            "{}",
            f[0]
        );
        assert!(
            f[0].contains("apt-get install apt-file && apt-get update"),
            "{}",
            f[0]
        );
        let consulted = ImageDrift {
            contents_index: ContentsState::Consulted,
            ..drift
        };
        let f = failures(
            &DriftReport {
                images: vec![consulted],
            },
            &DriftPolicy::default(),
        );
        assert!(
            f[0].contains("no Debian package of this machine's apt sources ships it"),
            "{}",
            f[0]
        );
    }
}

/// Hostile ELF files, layer tars and `lockfiles/library-index.toml`
/// (docs/fault-matrix-parsers.md): no panic, a reason for every refusal, caps on entries
/// and on the bytes of one file held.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated, mutated_text};
    use proptest::prelude::*;

    /// A small but complete ELF64 shared object: PT_LOAD over the whole
    /// file, PT_INTERP, PT_DYNAMIC with NEEDED, SONAME, RUNPATH, FLAGS_1,
    /// STRTAB and STRSZ.
    pub(super) fn sample_elf() -> Vec<u8> {
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let strtab = b"\0libc.so.6\0libx.so.1\0$ORIGIN/../lib\0";
        let (interp_at, dyn_at) = (64 + 3 * 56, 264u64);
        let dynamic: [(u64, u64); 7] = [
            (1, 1),                     // DT_NEEDED libc.so.6
            (14, 11),                   // DT_SONAME libx.so.1
            (29, 21),                   // DT_RUNPATH
            (0x6fff_fffb, 0x0800_0000), // DT_FLAGS_1 = DF_1_PIE
            (5, dyn_at + 7 * 16),       // DT_STRTAB (vaddr = offset)
            (10, strtab.len() as u64),  // DT_STRSZ
            (0, 0),
        ];
        let total = dyn_at + 7 * 16 + strtab.len() as u64;
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // entry
        f.extend_from_slice(&64u64.to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 3, 64, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let mut ph = |ty: u32, off: u64, size: u64| {
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&5u32.to_le_bytes());
            for v in [off, off, off, size, size, 8] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        };
        ph(1, 0, total); // PT_LOAD
        ph(3, interp_at, interp.len() as u64); // PT_INTERP
        ph(2, dyn_at, 7 * 16); // PT_DYNAMIC
        f.extend_from_slice(interp);
        f.resize(dyn_at as usize, 0);
        for (tag, val) in dynamic {
            f.extend_from_slice(&tag.to_le_bytes());
            f.extend_from_slice(&val.to_le_bytes());
        }
        f.extend_from_slice(strtab);
        assert_eq!(f.len() as u64, total);
        f
    }

    fn layer() -> Vec<u8> {
        super::tests::tar(&[
            ("etc/", tar::EntryType::Directory, b"", ""),
            ("etc/ld.so.conf", tar::EntryType::Regular, b"/opt/lib\n", ""),
            (
                "usr/lib/libx.so.1",
                tar::EntryType::Regular,
                &sample_elf(),
                "",
            ),
            ("usr/lib/libx.so", tar::EntryType::Symlink, b"", "libx.so.1"),
            (
                "usr/lib/again",
                tar::EntryType::Link,
                b"",
                "usr/lib/libx.so.1",
            ),
            ("usr/lib/.wh.gone", tar::EntryType::Regular, b"", ""),
            ("opt/.wh..wh..opq", tar::EntryType::Regular, b"", ""),
        ])
    }

    #[test]
    fn the_elf_sample_parses() {
        let info = parse_elf(&sample_elf()).unwrap();
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(info.needed, ["libc.so.6"]);
        assert_eq!(info.soname.as_deref(), Some("libx.so.1"));
        assert_eq!(info.runpath, Some(vec!["$ORIGIN/../lib".to_string()]));
        assert!(info.pie);
    }

    #[test]
    fn layers_are_capped_in_entries_and_file_size() {
        let mut fs = ImageFs::new();
        let e = fs
            .apply_layer_limited(layer().as_slice(), 3, MAX_FILE_READ)
            .unwrap_err();
        assert!(e.to_string().contains("more than 3 entries"), "{e}");
        let e = fs
            .apply_layer_limited(layer().as_slice(), MAX_LAYER_ENTRIES, 100)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("usr/lib/libx.so.1 in the layer is larger than 100 bytes"),
            "{e}"
        );
        // A big file drift does not need is skipped, not held.
        let big = super::tests::tar(&[("data.bin", tar::EntryType::Regular, &[7u8; 4096], "")]);
        fs.apply_layer_limited(big.as_slice(), MAX_LAYER_ENTRIES, 100)
            .unwrap();
        assert_eq!(fs.get("/data.bin"), Some(&Node::File { data: None }));
    }

    fn check_elf(data: &[u8]) -> Result<(), TestCaseError> {
        if let Err(e) = parse_elf(data) {
            prop_assert!(!e.trim().is_empty());
        }
        let _ = crate::python::resolve::builtin_modules(data);
        Ok(())
    }

    fn check_layer(data: &[u8]) -> Result<(), TestCaseError> {
        let mut fs = ImageFs::new();
        match fs.apply_layer(data) {
            Ok(()) => {
                for (_, d) in fs.elf_files() {
                    let _ = parse_elf(d);
                }
                let _ = fs.resolve("/usr/lib/libx.so");
            }
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(!message.trim().is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(hostile::config(1024))]
        #[test]
        fn elf_arbitrary_bytes(mut data in hostile::bytes(512), class in 1u8..3) {
            check_elf(&data)?;
            if data.len() > 5 {
                data[..4].copy_from_slice(b"\x7fELF");
                data[4] = class;
            }
            check_elf(&data)?;
        }

        #[test]
        fn elf_mutated(data in mutated(sample_elf())) {
            check_elf(&data)?;
        }
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn layer_arbitrary_bytes(data in hostile::bytes(2048)) {
            check_layer(&data)?;
        }

        #[test]
        fn layer_mutated(data in mutated(layer())) {
            check_layer(&data)?;
        }

        #[test]
        fn library_index_arbitrary_and_mutated(
            text in any::<String>(),
            m in mutated_text("[libraries]\n\"libssl.so.3\" = [\"libssl3\"]\n\"libz.so.1\" = [\"zlib1g\", \"zlib1g-ng\"]\n"),
        ) {
            for t in [text, m] {
                if let Err(e) = ProviderIndex::parse(&t, "lockfiles/library-index.toml") {
                    hostile::clear_error(&e, "lockfiles/library-index.toml")?;
                }
            }
        }
    }
}
