//! Wheels (PEP 427, the binary distribution format) read from bytes and
//! installed deterministically, by the lane itself: no pip in the image.
//!
//! [`read`] parses a wheel that was already verified against the lock (size
//! and sha256) and refuses, listing every problem at once:
//! `..` components, absolute or drive paths, backslashes, symlinks, special
//! files, duplicate paths, non-UTF-8 names, files missing from `RECORD`,
//! `RECORD` entries missing from the archive, and `RECORD` hashes or sizes
//! that do not match the file. [`install`] then maps the files to their
//! place in the image (the scheme of Debian's pip: purelib and platlib in
//! `/usr/local/lib/python3.X/dist-packages`, scripts in `/usr/local/bin`),
//! writes console scripts for the image's interpreter, writes `INSTALLER`,
//! rewrites `RECORD` for the installed paths (sorted) and writes no
//! `direct_url.json` and no `.pyc` files (see docs/drift.md).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use sha2::Digest as _;

use super::normalize;
use crate::spec::ImagePath;

/// Most bytes one wheel may unpack to (counted as the entries decompress,
/// not as their headers claim).
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Most entries (files and directories) one wheel's zip archive may list.
/// The largest wheels on PyPI have some tens of thousands.
pub const MAX_ENTRIES: usize = 100_000;

/// The caps [`read`] applies; tests use smaller ones.
#[derive(Debug, Clone, Copy)]
struct Limits {
    unpacked: u64,
    entries: usize,
}

const LIMITS: Limits = Limits {
    unpacked: MAX_UNPACKED,
    entries: MAX_ENTRIES,
};

/// The fields of a wheel file name (`{name}-{ver}(-{build})?-{py}-{abi}-{plat}.whl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    pub name: String,
    pub version: String,
    pub python: String,
    pub abi: String,
    pub platform: String,
}

pub fn parse_filename(filename: &str) -> Result<WheelName> {
    let Some(stem) = filename.strip_suffix(".whl") else {
        bail!("{filename:?} is not a wheel file name (it must end in .whl)");
    };
    let parts: Vec<&str> = stem.split('-').collect();
    let (name, version, tags) = match parts.as_slice() {
        [n, v, py, abi, plat] => (n, v, [py, abi, plat]),
        [n, v, _build, py, abi, plat] => (n, v, [py, abi, plat]),
        _ => bail!("{filename:?} is not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl)"),
    };
    if name.is_empty() || version.is_empty() || filename.contains('/') {
        bail!("{filename:?} is not a wheel file name");
    }
    Ok(WheelName {
        name: name.to_string(),
        version: version.to_string(),
        python: tags[0].to_string(),
        abi: tags[1].to_string(),
        platform: tags[2].to_string(),
    })
}

/// Core metadata (`METADATA`, RFC 822 style headers) the lane reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
}

pub fn parse_metadata(text: &str) -> Result<Metadata> {
    let mut m = Metadata::default();
    for line in text.lines() {
        if line.is_empty() {
            break; // the body (description) starts
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => m.name = v,
            "version" => m.version = v,
            "requires-dist" => m.requires_dist.push(v),
            "requires-python" => m.requires_python = Some(v),
            _ => {}
        }
    }
    if m.name.is_empty() || m.version.is_empty() {
        bail!("METADATA has no Name or Version");
    }
    Ok(m)
}

/// One file of a wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelFile {
    /// Path inside the archive (`six.py`, `pkg-1.0.data/scripts/x`).
    pub path: String,
    pub data: Vec<u8>,
    pub executable: bool,
}

/// `name = module:attr` from `entry_points.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoint {
    pub name: String,
    pub module: String,
    pub attr: String,
}

/// A wheel whose archive passed every check.
#[derive(Debug, Clone)]
pub struct Wheel {
    pub filename: String,
    /// `NAME-VERSION.dist-info`
    pub dist_info: String,
    pub metadata: Metadata,
    pub files: Vec<WheelFile>,
    pub console_scripts: Vec<EntryPoint>,
    pub gui_scripts: Vec<EntryPoint>,
}

/// Splits one CSV line (RECORD), with `"` quoting.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `sha256=<urlsafe base64, no padding>` of `data`.
pub fn record_hash(data: &[u8]) -> String {
    format!(
        "sha256={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(data))
    )
}

fn check_record_hash(expected: &str, data: &[u8]) -> std::result::Result<(), String> {
    let Some((algo, value)) = expected.split_once('=') else {
        return Err(format!("hash {expected:?} is not ALGORITHM=VALUE"));
    };
    let actual = match algo {
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha384" => sha2::Sha384::digest(data).to_vec(),
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        other => {
            return Err(format!(
                "hash algorithm {other:?} is not accepted (sha256, sha384, sha512)"
            ));
        }
    };
    let actual = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(actual);
    if actual != value.trim_end_matches('=') {
        return Err(format!(
            "RECORD says {algo}={value}, the file has {algo}={actual}"
        ));
    }
    Ok(())
}

/// Why a path of an archive is refused, if it is.
fn bad_path(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        return Some("is an absolute path");
    }
    if name.contains('\\') {
        return Some("contains a backslash");
    }
    if name.len() > 1 && name.as_bytes()[1] == b':' {
        return Some("is a drive path");
    }
    if name.contains('\0') {
        return Some("contains a NUL byte");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    for c in trimmed.split('/') {
        match c {
            ".." => return Some("has a \"..\" component"),
            "" | "." => return Some("is not normalised (empty or \".\" component)"),
            _ => {}
        }
    }
    None
}

/// Reads and checks a wheel. `filename` names it in errors and must match
/// the dist-info directory inside.
pub fn read(filename: &str, bytes: &[u8]) -> Result<Wheel> {
    read_limited(filename, bytes, LIMITS)
}

fn read_limited(filename: &str, bytes: &[u8], limits: Limits) -> Result<Wheel> {
    let parsed = parse_filename(filename)?;
    let refuse = |problems: Vec<String>| -> Result<Wheel> {
        bail!(
            "wheel {filename}: the archive is refused (see docs/drift.md, Python wheels):\n  {}",
            problems.join("\n  ")
        )
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .with_context(|| format!("wheel {filename}: not a zip archive"))?;
    if zip.len() > limits.entries {
        return refuse(vec![format!(
            "lists {} entries, more than the {} the lane reads",
            zip.len(),
            limits.entries
        )]);
    }
    let mut problems = Vec::new();
    let mut files: BTreeMap<String, WheelFile> = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut f = match zip.by_index(i) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("entry {i}: {e}"));
                continue;
            }
        };
        let name = match std::str::from_utf8(f.name_raw()) {
            Ok(n) => n.to_string(),
            Err(_) => {
                problems.push(format!("entry {i}: its name is not UTF-8"));
                continue;
            }
        };
        if let Some(why) = bad_path(&name) {
            problems.push(format!("{name:?} {why}"));
            continue;
        }
        if f.is_symlink() {
            problems.push(format!("{name:?} is a symlink"));
            continue;
        }
        if f.is_dir() {
            continue;
        }
        let mode = f.unix_mode().unwrap_or(0o644);
        let kind = mode & 0o170000;
        if kind != 0 && kind != 0o100000 {
            problems.push(format!("{name:?} is not a regular file (mode {mode:o})"));
            continue;
        }
        // The size a header claims is a hint; the bytes that come out of
        // the decompressor are what is counted against the cap.
        let left = limits.unpacked - total;
        let mut data = Vec::with_capacity(f.size().min(left).min(1 << 24) as usize);
        if let Err(e) = (&mut f).take(left + 1).read_to_end(&mut data) {
            problems.push(format!("{name:?} cannot be read: {e}"));
            continue;
        }
        total += data.len() as u64;
        if total > limits.unpacked {
            problems.push(format!("unpacks to more than {} bytes", limits.unpacked));
            break;
        }
        if files.contains_key(&name) {
            problems.push(format!("{name:?} is in the archive twice"));
            continue;
        }
        files.insert(
            name.clone(),
            WheelFile {
                path: name,
                data,
                executable: mode & 0o111 != 0,
            },
        );
    }
    if !problems.is_empty() {
        return refuse(problems);
    }
    // The one .dist-info directory at the root.
    let dist_infos: BTreeSet<&str> = files
        .keys()
        .filter_map(|p| p.split_once('/').map(|(d, _)| d))
        .filter(|d| d.ends_with(".dist-info"))
        .collect();
    let dist_info = match dist_infos.iter().collect::<Vec<_>>().as_slice() {
        [one] => one.to_string(),
        [] => return refuse(vec!["has no .dist-info directory".into()]),
        many => {
            return refuse(vec![format!(
                "has several .dist-info directories: {}",
                many.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )]);
        }
    };
    let want = format!(
        "{}-{}.dist-info",
        normalize(&parsed.name).replace('-', "_"),
        parsed.version
    );
    if normalize(&dist_info).replace('-', "_") != normalize(&want).replace('-', "_") {
        problems.push(format!(
            "its dist-info directory {dist_info} does not match the file name (expected {want})"
        ));
    }
    let text = |name: &str| -> Option<String> {
        files
            .get(&format!("{dist_info}/{name}"))
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
    };
    let Some(record) = text("RECORD") else {
        return refuse(vec![format!("has no {dist_info}/RECORD")]);
    };
    let mut listed = BTreeSet::new();
    for (n, line) in record.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line);
        let [path, hash, size] = fields.as_slice() else {
            problems.push(format!("RECORD line {}: expected PATH,HASH,SIZE", n + 1));
            continue;
        };
        if let Some(why) = bad_path(path) {
            problems.push(format!("RECORD line {}: {path:?} {why}", n + 1));
            continue;
        }
        listed.insert(path.clone());
        let Some(f) = files.get(path) else {
            problems.push(format!("RECORD lists {path}, which is not in the archive"));
            continue;
        };
        if path == &format!("{dist_info}/RECORD") {
            continue;
        }
        if hash.is_empty() {
            problems.push(format!("RECORD has no hash for {path}"));
            continue;
        }
        if let Err(e) = check_record_hash(hash, &f.data) {
            problems.push(format!("{path}: {e}"));
        }
        if !size.is_empty() && size.parse::<u64>().ok() != Some(f.data.len() as u64) {
            problems.push(format!(
                "{path}: RECORD says {size} bytes, the file has {}",
                f.data.len()
            ));
        }
    }
    for p in files.keys() {
        let signature =
            p == &format!("{dist_info}/RECORD.jws") || p == &format!("{dist_info}/RECORD.p7s");
        if !listed.contains(p) && !signature {
            problems.push(format!("{p} is not listed in RECORD"));
        }
    }
    let metadata = match text("METADATA").map(|t| parse_metadata(&t)) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            problems.push(format!("{dist_info}/METADATA: {e:#}"));
            None
        }
        None => {
            problems.push(format!("has no {dist_info}/METADATA"));
            None
        }
    };
    if let Some(m) = &metadata
        && (normalize(&m.name) != normalize(&parsed.name) || m.version != parsed.version)
    {
        problems.push(format!(
            "METADATA names {} {}, the file name {} {}",
            m.name, m.version, parsed.name, parsed.version
        ));
    }
    match text("WHEEL") {
        None => problems.push(format!("has no {dist_info}/WHEEL")),
        Some(w) => {
            let version = w
                .lines()
                .find_map(|l| l.strip_prefix("Wheel-Version:"))
                .map(str::trim)
                .unwrap_or("");
            if !version.starts_with("1.") {
                problems.push(format!(
                    "WHEEL declares Wheel-Version {version:?}; only 1.x is supported"
                ));
            }
        }
    }
    for p in files.keys() {
        if let Some((top, rest)) = p.split_once('/')
            && top.ends_with(".data")
        {
            let key = rest.split('/').next().unwrap_or("");
            if !["purelib", "platlib", "scripts", "data", "headers"].contains(&key) {
                problems.push(format!("{p}: unknown .data category {key:?}"));
            }
        }
    }
    if !problems.is_empty() {
        return refuse(problems);
    }
    let (console_scripts, gui_scripts) = match text("entry_points.txt") {
        Some(t) => (
            entry_points(&t, "console_scripts"),
            entry_points(&t, "gui_scripts"),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(Wheel {
        filename: filename.to_string(),
        dist_info,
        metadata: metadata.unwrap_or_default(),
        files: files.into_values().collect(),
        console_scripts,
        gui_scripts,
    })
}

fn entry_points(text: &str, section: &str) -> Vec<EntryPoint> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            inside = l == format!("[{section}]");
            continue;
        }
        if !inside || l.is_empty() || l.starts_with(['#', ';']) {
            continue;
        }
        let Some((name, target)) = l.split_once('=') else {
            continue;
        };
        let target = target.split('[').next().unwrap_or("").trim();
        let (module, attr) = target.split_once(':').unwrap_or((target, ""));
        out.push(EntryPoint {
            name: name.trim().to_string(),
            module: module.trim().to_string(),
            attr: attr.trim().to_string(),
        });
    }
    out
}

/// Where an installed wheel's files go (paths inside the image, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstallScheme {
    /// purelib and platlib (`usr/local/lib/python3.11/dist-packages`).
    pub site: String,
    pub scripts: String,
    pub data: String,
    pub headers: String,
    /// The interpreter console scripts name in their `#!` line.
    pub interpreter: String,
}

impl InstallScheme {
    /// Debian's scheme for pip installs into `/usr/local` for `python3.X`.
    pub fn debian_local(python: &str) -> InstallScheme {
        InstallScheme {
            site: format!("usr/local/lib/python{python}/dist-packages"),
            scripts: "usr/local/bin".into(),
            data: "usr/local".into(),
            headers: format!("usr/local/include/python{python}"),
            interpreter: format!("/usr/bin/python{python}"),
        }
    }
}

/// One file an installed wheel puts into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledFile {
    pub path: ImagePath,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// The installed files of a verified wheel, in path order.
pub fn install(w: &Wheel, scheme: &InstallScheme) -> Result<Vec<InstalledFile>> {
    let data_dir = format!(
        "{}.data",
        w.dist_info
            .strip_suffix(".dist-info")
            .unwrap_or(&w.dist_info)
    );
    let record_path = format!("{}/{}/RECORD", scheme.site, w.dist_info);
    let mut out: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for f in &w.files {
        if f.path == format!("{}/RECORD", w.dist_info)
            || f.path.starts_with(&format!("{}/RECORD.", w.dist_info))
        {
            continue;
        }
        let (dest, mut data, mut mode) = match f.path.strip_prefix(&format!("{data_dir}/")) {
            Some(rest) => {
                let (key, rel) = rest.split_once('/').unwrap_or((rest, ""));
                match key {
                    "purelib" | "platlib" => {
                        (format!("{}/{rel}", scheme.site), f.data.clone(), 0o644)
                    }
                    "scripts" => (
                        format!("{}/{rel}", scheme.scripts),
                        script(&f.data, &scheme.interpreter),
                        0o755,
                    ),
                    "data" => (format!("{}/{rel}", scheme.data), f.data.clone(), 0o644),
                    "headers" => (
                        format!("{}/{}/{rel}", scheme.headers, w.metadata.name),
                        f.data.clone(),
                        0o644,
                    ),
                    _ => bail!("wheel {}: {}: unknown .data category", w.filename, f.path),
                }
            }
            None => (format!("{}/{}", scheme.site, f.path), f.data.clone(), 0o644),
        };
        if f.executable {
            mode = 0o755;
        }
        if dest.split('/').any(|c| c.is_empty() || c == "..") {
            bail!(
                "wheel {}: {} would be installed outside its scheme",
                w.filename,
                f.path
            );
        }
        data.shrink_to_fit();
        if out.insert(dest.clone(), (data, mode)).is_some() {
            bail!("wheel {}: two files install to /{dest}", w.filename);
        }
    }
    for (ep, gui) in w
        .console_scripts
        .iter()
        .map(|e| (e, false))
        .chain(w.gui_scripts.iter().map(|e| (e, true)))
    {
        let _ = gui;
        if ep.name.is_empty() || ep.name.contains(['/', '\\']) || ep.name.starts_with('.') {
            bail!(
                "wheel {}: entry point name {:?} is not a file name",
                w.filename,
                ep.name
            );
        }
        let dest = format!("{}/{}", scheme.scripts, ep.name);
        let body = console_script(&scheme.interpreter, ep);
        if out
            .insert(dest.clone(), (body.into_bytes(), 0o755))
            .is_some()
        {
            bail!(
                "wheel {}: console script /{dest} collides with a file of the wheel",
                w.filename
            );
        }
    }
    out.insert(
        format!("{}/{}/INSTALLER", scheme.site, w.dist_info),
        (b"release-lane\n".to_vec(), 0o644),
    );
    // RECORD for the installed files, paths relative to the site directory.
    let mut record = String::new();
    for (path, (data, _)) in &out {
        record.push_str(&format!(
            "{},{},{}\n",
            csv_quote(&relative(&scheme.site, path)),
            record_hash(data),
            data.len()
        ));
    }
    record.push_str(&format!(
        "{},,\n",
        csv_quote(&relative(&scheme.site, &record_path))
    ));
    out.insert(record_path, (record.into_bytes(), 0o644));
    out.into_iter()
        .map(|(p, (data, mode))| {
            Ok(InstalledFile {
                path: ImagePath::parse(&format!("/{p}"))
                    .map_err(|e| anyhow::anyhow!("wheel {}: {e}", w.filename))?,
                data,
                mode,
            })
        })
        .collect()
}

/// `path` relative to the directory `from` (both relative to the root).
fn relative(from: &str, path: &str) -> String {
    let f: Vec<&str> = from.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    let common = f.iter().zip(&p).take_while(|(a, b)| a == b).count();
    let mut out: Vec<&str> = vec![".."; f.len() - common];
    out.extend(&p[common..]);
    out.join("/")
}

/// A script from `.data/scripts`: `#!python` becomes the image's interpreter.
fn script(data: &[u8], interpreter: &str) -> Vec<u8> {
    for prefix in [&b"#!pythonw"[..], b"#!python"] {
        if let Some(rest) = data.strip_prefix(prefix)
            && rest.first().is_none_or(|b| b.is_ascii_whitespace())
        {
            let mut out = format!("#!{interpreter}").into_bytes();
            out.extend_from_slice(rest);
            return out;
        }
    }
    data.to_vec()
}

/// The launcher pip writes for `name = module:attr`.
fn console_script(interpreter: &str, ep: &EntryPoint) -> String {
    let (import, call) = if ep.attr.is_empty() {
        (format!("import {}", ep.module), format!("{}()", ep.module))
    } else {
        let top = ep.attr.split('.').next().unwrap_or(&ep.attr);
        (
            format!("from {} import {top}", ep.module),
            format!("{}()", ep.attr),
        )
    };
    format!(
        "#!{interpreter}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n{import}\nif __name__ == \"__main__\":\n    sys.argv[0] = re.sub(r\"(-script\\.pyw|\\.exe)?$\", \"\", sys.argv[0])\n    sys.exit({call})\n"
    )
}

/// The top-level import names a set of installed paths (relative to the
/// site directory, as in RECORD) provides: `six.py` -> `six`,
/// `dateutil/...` -> `dateutil`, `_yaml.cpython-311-x86_64-linux-gnu.so`
/// -> `_yaml`.
pub fn top_level_modules<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for p in paths {
        if p.starts_with("../") {
            continue;
        }
        let (first, nested) = match p.split_once('/') {
            Some((d, _)) => (d, true),
            None => (p, false),
        };
        if first.ends_with(".dist-info")
            || first.ends_with(".data")
            || first.ends_with(".egg-info")
            || first == "__pycache__"
        {
            continue;
        }
        if nested {
            if is_identifier(first) {
                out.insert(first.to_string());
            }
            continue;
        }
        let name = if let Some(n) = first.strip_suffix(".py") {
            n
        } else if first.ends_with(".so") || first.ends_with(".pyc") {
            first.split('.').next().unwrap_or("")
        } else {
            continue;
        };
        if is_identifier(name) {
            out.insert(name.to_string());
        }
    }
    out.into_iter().collect()
}

pub use super::is_identifier;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A wheel from (path, bytes) pairs; RECORD is written unless given.
    pub fn make_wheel(files: &[(&str, &[u8])], record: Option<&str>) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        let mut rec = String::new();
        for (p, d) in files {
            w.start_file(*p, opts).unwrap();
            w.write_all(d).unwrap();
            rec.push_str(&format!("{p},{},{}\n", record_hash(d), d.len()));
        }
        let dist = files
            .iter()
            .find_map(|(p, _)| p.split_once(".dist-info/").map(|(d, _)| d.to_string()))
            .unwrap();
        rec.push_str(&format!("{dist}.dist-info/RECORD,,\n"));
        w.start_file(format!("{dist}.dist-info/RECORD"), opts)
            .unwrap();
        w.write_all(record.unwrap_or(&rec).as_bytes()).unwrap();
        w.finish().unwrap().into_inner()
    }

    pub const METADATA: &[u8] =
        b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: six >=1.5\nRequires-Dist: pytest ; extra == 'test'\n\nbody\n";
    pub const WHEEL: &[u8] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n";

    fn demo(extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut files: Vec<(&str, &[u8])> = vec![
            ("demo/__init__.py", b"import six\n"),
            ("demo-1.0.dist-info/METADATA", METADATA),
            ("demo-1.0.dist-info/WHEEL", WHEEL),
            (
                "demo-1.0.dist-info/entry_points.txt",
                b"[console_scripts]\ndemo = demo.cli:main\n",
            ),
        ];
        files.extend_from_slice(extra);
        make_wheel(&files, None)
    }

    #[test]
    fn a_good_wheel_installs_deterministically() {
        let bytes = demo(&[("demo-1.0.data/scripts/tool", b"#!python\nprint(1)\n")]);
        let w = read("demo-1.0-py3-none-any.whl", &bytes).unwrap();
        assert_eq!(w.metadata.requires_dist.len(), 2);
        let scheme = InstallScheme::debian_local("3.11");
        let files = install(&w, &scheme).unwrap();
        let paths: Vec<String> = files.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "/usr/local/bin/demo",
                "/usr/local/bin/tool",
                "/usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/INSTALLER",
                "/usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/METADATA",
                "/usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/RECORD",
                "/usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/WHEEL",
                "/usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/entry_points.txt",
                "/usr/local/lib/python3.11/dist-packages/demo/__init__.py",
            ]
        );
        let script = String::from_utf8(files[0].data.clone()).unwrap();
        assert!(script.starts_with("#!/usr/bin/python3.11\n"), "{script}");
        assert!(script.contains("from demo.cli import main"), "{script}");
        assert_eq!(files[0].mode, 0o755);
        assert!(
            files[1]
                .data
                .starts_with(b"#!/usr/bin/python3.11\nprint(1)")
        );
        let record = String::from_utf8(files[4].data.clone()).unwrap();
        assert!(record.contains("../../../bin/demo,sha256="), "{record}");
        assert!(record.contains("demo-1.0.dist-info/RECORD,,"), "{record}");
        assert!(
            !paths
                .iter()
                .any(|p| p.contains("direct_url.json") || p.ends_with(".pyc"))
        );
        // Same bytes in, same files out.
        assert_eq!(
            install(&read("demo-1.0-py3-none-any.whl", &bytes).unwrap(), &scheme).unwrap(),
            files
        );
    }

    #[test]
    fn hostile_wheels_are_refused_with_every_reason() {
        for (path, why) in [
            ("../evil.py", "has a \"..\" component"),
            ("demo/../../x.py", "has a \"..\" component"),
            ("/etc/passwd", "is an absolute path"),
            ("C:/x.py", "is a drive path"),
        ] {
            let e = format!(
                "{:#}",
                read("demo-1.0-py3-none-any.whl", &demo(&[(path, b"x")])).unwrap_err()
            );
            assert!(e.contains(why) && e.contains(path), "{path}: {e}");
        }
        // A symlink entry.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.add_symlink("demo/link", "/etc/shadow", opts).unwrap();
        for (p, d) in [
            ("demo-1.0.dist-info/METADATA", METADATA),
            ("demo-1.0.dist-info/WHEEL", WHEEL),
        ] {
            w.start_file(p, opts).unwrap();
            w.write_all(d).unwrap();
        }
        let bytes = w.finish().unwrap().into_inner();
        let e = format!(
            "{:#}",
            read("demo-1.0-py3-none-any.whl", &bytes).unwrap_err()
        );
        assert!(e.contains("\"demo/link\" is a symlink"), "{e}");
    }

    #[test]
    fn record_mismatches_are_refused() {
        let files: Vec<(&str, &[u8])> = vec![
            ("demo/__init__.py", b"import six\n"),
            ("demo/extra.py", b"x = 1\n"),
            ("demo-1.0.dist-info/METADATA", METADATA),
            ("demo-1.0.dist-info/WHEEL", WHEEL),
        ];
        let record = format!(
            "demo/__init__.py,{},11\ndemo-1.0.dist-info/METADATA,{},{}\ndemo-1.0.dist-info/WHEEL,{},{}\ndemo/gone.py,{},1\ndemo-1.0.dist-info/RECORD,,\n",
            record_hash(b"something else"),
            record_hash(METADATA),
            METADATA.len(),
            record_hash(WHEEL),
            WHEEL.len(),
            record_hash(b"y"),
        );
        let bytes = make_wheel(&files, Some(&record));
        let e = format!(
            "{:#}",
            read("demo-1.0-py3-none-any.whl", &bytes).unwrap_err()
        );
        assert!(e.contains("demo/__init__.py: RECORD says sha256="), "{e}");
        assert!(e.contains("demo/extra.py is not listed in RECORD"), "{e}");
        assert!(
            e.contains("RECORD lists demo/gone.py, which is not in the archive"),
            "{e}"
        );
    }

    #[test]
    fn names_and_modules() {
        let n = parse_filename("python_dateutil-2.9.0.post0-py2.py3-none-any.whl").unwrap();
        assert_eq!(
            (n.name.as_str(), n.version.as_str()),
            ("python_dateutil", "2.9.0.post0")
        );
        assert!(parse_filename("x.tar.gz").is_err());
        assert_eq!(
            top_level_modules([
                "dateutil/__init__.py",
                "six.py",
                "_yaml.cpython-311-x86_64-linux-gnu.so",
                "x-1.dist-info/RECORD",
                "../../../bin/tool",
                "__pycache__/six.cpython-311.pyc",
            ]),
            ["_yaml", "dateutil", "six"]
        );
        assert_eq!(
            relative("usr/local/lib/python3.11/dist-packages", "usr/local/bin/x"),
            "../../../bin/x"
        );
    }
}

/// Hostile wheels (docs/fault-matrix-parsers.md): file names, METADATA, and the zip
/// archive itself, arbitrary and mutated. No panic; every refusal names the
/// wheel; size and entry caps hold.
#[cfg(test)]
mod properties {
    use super::tests::{METADATA, WHEEL, make_wheel};
    use super::*;
    use crate::hostile::{self, clear_error, mutated, mutated_text};
    use proptest::prelude::*;

    const NAME: &str = "demo-1.0-py3-none-any.whl";

    fn sample() -> Vec<u8> {
        make_wheel(
            &[
                ("demo/__init__.py", b"import six\n"),
                ("demo-1.0.dist-info/METADATA", METADATA),
                ("demo-1.0.dist-info/WHEEL", WHEEL),
                (
                    "demo-1.0.dist-info/entry_points.txt",
                    b"[console_scripts]\ndemo = demo.cli:main\n",
                ),
                ("demo-1.0.data/scripts/tool", b"#!python\nprint(1)\n"),
            ],
            None,
        )
    }

    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        match read(NAME, bytes) {
            Ok(w) => {
                let _ = install(&w, &InstallScheme::debian_local("3.11"));
            }
            Err(e) => clear_error(&e, NAME)?,
        }
        Ok(())
    }

    #[test]
    fn the_sample_reads() {
        read(NAME, &sample()).unwrap();
    }

    #[test]
    fn a_deflate_bomb_is_refused_at_the_cap() {
        let zeros = vec![0u8; 4 << 20];
        let bytes = make_wheel(
            &[
                ("demo/big.bin", &zeros),
                ("demo-1.0.dist-info/METADATA", METADATA),
                ("demo-1.0.dist-info/WHEEL", WHEEL),
            ],
            None,
        );
        assert!(bytes.len() < 64 << 10, "{} bytes", bytes.len());
        let limits = Limits {
            unpacked: 1 << 20,
            entries: MAX_ENTRIES,
        };
        let e = format!("{:#}", read_limited(NAME, &bytes, limits).unwrap_err());
        assert!(e.contains("unpacks to more than 1048576 bytes"), "{e}");
        assert!(e.contains(NAME), "{e}");
    }

    #[test]
    fn too_many_entries_are_refused() {
        let names: Vec<String> = (0..20).map(|i| format!("demo/m{i}.py")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        files.push(("demo-1.0.dist-info/METADATA", METADATA));
        files.push(("demo-1.0.dist-info/WHEEL", WHEEL));
        let limits = Limits {
            unpacked: MAX_UNPACKED,
            entries: 10,
        };
        let e = format!(
            "{:#}",
            read_limited(NAME, &make_wheel(&files, None), limits).unwrap_err()
        );
        assert!(e.contains("lists 23 entries, more than the 10"), "{e}");
    }

    proptest! {
        #![proptest_config(hostile::config(128))]
        #[test]
        fn wheel_arbitrary_bytes(bytes in hostile::bytes(4096)) {
            check(&bytes)?;
        }

        #[test]
        fn wheel_mutated(bytes in mutated(sample())) {
            check(&bytes)?;
        }
    }

    proptest! {
        #![proptest_config(hostile::config(512))]
        #[test]
        fn wheel_filename_arbitrary(name in any::<String>(), structured in "[a-zA-Z0-9_.-]{0,40}(\\.whl)?") {
            let _ = parse_filename(&name);
            let _ = parse_filename(&structured);
        }

        #[test]
        fn metadata_arbitrary_and_mutated(
            text in any::<String>(),
            m in mutated_text(std::str::from_utf8(METADATA).unwrap()),
        ) {
            for t in [text, m] {
                if let Ok(md) = parse_metadata(&t) {
                    for r in &md.requires_dist {
                        let _ = super::super::requirements::Requirement::parse(r);
                    }
                }
            }
        }
    }
}
