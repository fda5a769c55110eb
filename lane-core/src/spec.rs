//! `images/<name>/image.toml`: the user's description of one image.
//!
//! Parsing is pure: [`parse`] takes the file's text and its path (for error
//! messages) and returns a validated [`ImageSpec`] or one error that says what
//! is wrong, where (file:line:column) and how to fix it. Unknown keys are
//! errors. Nothing here touches the file system.

use std::collections::BTreeMap;
use std::fmt;

use crate::id::{Repository, Tag};
use anyhow::{Result, bail};
use serde::Deserialize;
use toml::Spanned;

/// A validated image definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageSpec {
    pub name: String,
    /// Folder of the image, relative to the workspace root (`images/hello`).
    pub dir: String,
    pub repository: Repository,
    pub tags: Vec<Tag>,
    pub base: BaseRef,
    pub layers: Vec<LayerSpec>,
    pub config: RuntimeConfig,
    pub smoke: Vec<SmokeSpec>,
    /// Debian packages installed as the image's first layer (`[debian]`),
    /// pinned in `lockfiles/debian.lock`. See `crate::debian`.
    pub debian: Option<DebianSpec>,
    /// Python wheels and the application's sources (`[python]`), pinned in
    /// `lockfiles/python.lock`. See `crate::python`.
    pub python: Option<PythonSpec>,
    /// Paths the no-secrets gate leaves alone on purpose (`[secrets]
    /// allow`), shown in the gate's evidence and the provenance.
    pub secrets_allow: Vec<ImagePath>,
    /// Who the smoke commands run as (`smoke_user`: `root`, or `UID[:GID]`);
    /// `None`: the image's user, else nobody.
    pub smoke_user: Option<String>,
    /// Workspace paths outside the image's folder its sources may come
    /// from (`[sources] allow`), relative to the root, normalised.
    pub sources_allow: Vec<String>,
}

/// `[debian] packages = [...]`: the requested packages; their dependency
/// closure, versions and hashes come from `lockfiles/debian.lock`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DebianSpec {
    pub packages: Vec<String>,
    /// Packages a dependency names that the image leaves out on purpose
    /// (`dpkg` for a distroless Python): not resolved, not installed.
    pub exclude: Vec<String>,
    /// `file:line:column` of the table, for errors found later.
    pub at: String,
}

/// `[python]`: pinned wheels (`requirements = ["NAME==VERSION", ...]`),
/// the application's sources and extra modules to smoke-import.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PythonSpec {
    pub requirements: Vec<String>,
    /// Source folder of the application, relative to the image folder.
    pub app: Option<String>,
    /// Where the application's sources go in the image (default `/app`).
    pub app_dir: ImagePath,
    /// Extra top-level modules the smoke-import must import.
    pub modules: Vec<String>,
    /// `file:line:column` of the table.
    pub at: String,
}

/// Where an image's root file system starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BaseRef {
    /// An empty root file system.
    Scratch,
    /// Another image of this workspace, built first (`workspace://NAME`).
    Workspace { image: String },
    /// An image from a registry, pinned by digest (`REPO@sha256:HEX`).
    Pinned { repository: String, digest: String },
}

impl fmt::Display for BaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseRef::Scratch => f.write_str("scratch"),
            BaseRef::Workspace { image } => write!(f, "workspace://{image}"),
            BaseRef::Pinned { repository, digest } => write!(f, "{repository}@{digest}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerSpec {
    pub name: String,
    pub binaries: Vec<BinarySpec>,
    pub files: Vec<FileSpec>,
    pub dirs: Vec<DirSpec>,
    pub symlinks: Vec<SymlinkSpec>,
}

/// How a workspace binary is linked.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// `-C target-feature=+crt-static`: runs on `scratch`.
    Static,
    /// Ordinary dynamic linking against the base image's libc.
    Dynamic,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BinarySpec {
    pub package: String,
    pub bin: String,
    pub dest: ImagePath,
    pub mode: u32,
    pub owner: Owner,
    pub link: Link,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileSpec {
    /// Source path relative to the image folder.
    pub src: String,
    pub dest: ImagePath,
    /// File mode; `None` means 0755 when the source has an execute bit, else 0644.
    pub mode: Option<u32>,
    /// Mode of directories copied from a source directory.
    pub dir_mode: u32,
    pub owner: Owner,
    /// `file:line:column` of the entry, for errors found later (missing source).
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirSpec {
    pub dest: ImagePath,
    pub mode: u32,
    pub owner: Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SymlinkSpec {
    pub dest: ImagePath,
    pub target: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SmokeSpec {
    pub name: String,
    pub command: Vec<String>,
    pub expect_exit: i64,
    /// A regular expression the container's combined output must match.
    pub expect_output: Option<String>,
    pub timeout_secs: u64,
}

/// A normalised absolute path inside the image, stored without the leading
/// `/` (`usr/local/bin/hello`), as it appears in a tar layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ImagePath(String);

/// The name prefix of an OCI whiteout (`.wh.NAME` deletes NAME of a lower
/// layer, `.wh..wh..opq` hides a folder's lower contents).
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Why a path with a whiteout name is refused.
pub fn whiteout_refused(path: &str, part: &str) -> String {
    format!(
        "{path:?} has a whiteout name {part:?} (.wh.*): a layer holding it would delete or hide a lower layer's files; refused (rename the file)"
    )
}

impl ImagePath {
    /// The first whiteout name among its components, if any (a path made
    /// by `join` from a walked folder is checked with this).
    pub fn whiteout(&self) -> Option<&str> {
        self.0.split('/').find(|p| p.starts_with(WHITEOUT_PREFIX))
    }

    /// Parses `/a/b/c`. Refuses relative paths, `..`, `.`, empty components
    /// and the root itself, so a value of this type can never leave the image.
    pub fn parse(s: &str) -> std::result::Result<ImagePath, String> {
        if s.split('/').any(|c| c == "..") {
            return Err(format!(
                "destination {s:?} leaves the image root through \"..\"; use an absolute path inside the image"
            ));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!(
                "destination {s:?} is not absolute; write it as \"/{s}\""
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err("destination \"/\" is the image root itself; name a path below it".into());
        }
        for part in rest.split('/') {
            match part {
                "." | "" => {
                    return Err(format!(
                        "destination {s:?} is not normalised (empty or \".\" component); write it without them"
                    ));
                }
                _ if part.contains('\0') => {
                    return Err(format!("destination {s:?} contains a NUL byte"));
                }
                _ if part.starts_with(WHITEOUT_PREFIX) => {
                    return Err(whiteout_refused(s, part));
                }
                _ => {}
            }
        }
        Ok(ImagePath(rest.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Joins a relative component (from a walked source directory).
    pub fn join(&self, rel: &str) -> ImagePath {
        ImagePath(format!("{}/{}", self.0, rel))
    }

    /// Every proper ancestor, outermost first (`usr`, `usr/local`, ...).
    pub fn ancestors(&self) -> impl Iterator<Item = ImagePath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| ImagePath(self.0[..i].to_string()))
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

// ---------------------------------------------------------------------------
// The raw TOML shape. Every struct denies unknown keys.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Spanned<String>,
    repository: Spanned<String>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    #[serde(default)]
    base: Option<Spanned<String>>,
    #[serde(default)]
    layer: Vec<RawLayer>,
    #[serde(default)]
    config: RawConfig,
    #[serde(default)]
    smoke: Vec<RawSmoke>,
    #[serde(default)]
    debian: Option<Spanned<RawDebian>>,
    #[serde(default)]
    python: Option<Spanned<RawPython>>,
    #[serde(default)]
    secrets: Option<RawSecrets>,
    #[serde(default)]
    smoke_user: Option<Spanned<String>>,
    #[serde(default)]
    sources: Option<RawSources>,
}

/// `[sources] allow = ["shared/certs", ...]`: workspace paths (relative to
/// the root) outside the image's folder that its sources may come from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

/// `[secrets] allow = ["/path", ...]`: files the no-secrets gate does not
/// scan, on purpose (test fixtures).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebian {
    packages: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPython {
    #[serde(default)]
    requirements: Vec<Spanned<String>>,
    app: Option<Spanned<String>>,
    app_dir: Option<Spanned<String>>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    name: Spanned<String>,
    #[serde(default)]
    binaries: Vec<RawBinary>,
    #[serde(default)]
    files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    dirs: Vec<RawDir>,
    #[serde(default)]
    symlinks: Vec<RawSymlink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinary {
    package: Spanned<String>,
    bin: Option<Spanned<String>>,
    dest: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    #[serde(default)]
    link: Option<Link>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    src: Spanned<String>,
    dest: Spanned<String>,
    mode: Option<Spanned<String>>,
    dir_mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    dest: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSymlink {
    dest: Spanned<String>,
    target: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    user: Option<Spanned<String>>,
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    exposed_ports: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmoke {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    expect_exit: i64,
    expect_output: Option<Spanned<String>>,
    timeout_secs: Option<Spanned<u64>>,
}

/// Maps byte offsets of one file to `file:line:column`.
struct Source<'a> {
    path: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}", self.path)
    }

    fn err<T>(&self, span: std::ops::Range<usize>, msg: impl fmt::Display) -> Result<T> {
        bail!("{}: {msg}", self.at(span.start))
    }
}

/// Parses and validates one `image.toml`.
///
/// `path` is the file's workspace-relative path (`images/hello/image.toml`);
/// the image folder is its parent.
pub fn parse(path: &str, text: &str) -> Result<ImageSpec> {
    let src = Source { path, text };
    let raw: RawImage = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e
                .span()
                .map_or_else(|| path.to_string(), |s| src.at(s.start));
            bail!(
                "{at}: {}; see images/hello/image.toml for a complete example",
                e.message().trim_end_matches('.')
            );
        }
    };
    let dir = path.rsplit_once('/').map_or(".", |(d, _)| d).to_string();

    let name = raw.name.get_ref().clone();
    if !valid_component(&name) {
        src.err(
            raw.name.span(),
            format_args!(
                "image name {name:?} is invalid; use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
            ),
        )?;
    }
    let repository: Repository = match raw.repository.get_ref().parse() {
        Ok(r) => r,
        Err(e) => src.err(
            raw.repository.span(),
            format_args!("{e} (the registry host is given by --registry)"),
        )?,
    };
    let mut tags = Vec::new();
    for tag in &raw.tags {
        match tag.get_ref().parse::<Tag>() {
            Ok(t) => tags.push(t),
            Err(e) => src.err(tag.span(), e)?,
        }
    }
    if tags.is_empty() {
        tags.push(Tag::latest());
    }

    let base = match &raw.base {
        None => BaseRef::Scratch,
        Some(b) => parse_base(b.get_ref()).or_else(|msg| src.err(b.span(), msg))?,
    };

    let mut layers = Vec::new();
    let mut layer_names = Vec::<String>::new();
    for l in raw.layer {
        let lname = l.name.get_ref().clone();
        if !valid_component(&lname) || layer_names.contains(&lname) {
            src.err(
                l.name.span(),
                format_args!("layer name {lname:?} is invalid or used twice; give each layer a unique lowercase name"),
            )?;
        }
        layer_names.push(lname.clone());
        let mut binaries = Vec::new();
        for b in l.binaries {
            binaries.push(BinarySpec {
                package: b.package.get_ref().clone(),
                bin: b.bin.as_ref().unwrap_or(&b.package).get_ref().clone(),
                dest: dest(&src, &b.dest)?,
                mode: mode(&src, b.mode.as_ref())?.unwrap_or(0o755),
                owner: owner(&src, b.owner.as_ref())?,
                link: b.link.unwrap_or(Link::Static),
            });
        }
        let mut files = Vec::new();
        for f in l.files {
            let at = src.at(f.span().start);
            let f = f.into_inner();
            let s = f.src.get_ref();
            if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
                src.err(
                    f.src.span(),
                    format_args!(
                        "source {s:?} must be a relative path inside the image folder {dir}/ (no leading '/', no \"..\")"
                    ),
                )?;
            }
            files.push(FileSpec {
                src: s.trim_end_matches('/').to_string(),
                dest: dest(&src, &f.dest)?,
                mode: mode(&src, f.mode.as_ref())?,
                dir_mode: mode(&src, f.dir_mode.as_ref())?.unwrap_or(0o755),
                owner: owner(&src, f.owner.as_ref())?,
                at,
            });
        }
        let mut dirs = Vec::new();
        for d in l.dirs {
            dirs.push(DirSpec {
                dest: dest(&src, &d.dest)?,
                mode: mode(&src, d.mode.as_ref())?.unwrap_or(0o755),
                owner: owner(&src, d.owner.as_ref())?,
            });
        }
        let mut symlinks = Vec::new();
        for s in l.symlinks {
            let target = s.target.get_ref();
            if target.is_empty() || target.contains('\0') {
                src.err(s.target.span(), "symlink target must be a non-empty path")?;
            }
            symlinks.push(SymlinkSpec {
                dest: dest(&src, &s.dest)?,
                target: target.clone(),
            });
        }
        layers.push(LayerSpec {
            name: lname,
            binaries,
            files,
            dirs,
            symlinks,
        });
    }

    let c = raw.config;
    let mut env = BTreeMap::new();
    for (k, v) in c.env {
        let key = k.get_ref();
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            src.err(
                k.span(),
                format_args!("environment variable name {key:?} is invalid"),
            )?;
        }
        env.insert(key.clone(), v);
    }
    let mut exposed_ports = Vec::new();
    for p in c.exposed_ports {
        let text = p.get_ref();
        let (num, proto) = text.split_once('/').unwrap_or((text.as_str(), "tcp"));
        if num.parse::<u16>().map_or(true, |n| n == 0) || !matches!(proto, "tcp" | "udp" | "sctp") {
            src.err(
                p.span(),
                format_args!("exposed port {text:?} is invalid; write it as \"8080/tcp\""),
            )?;
        }
        exposed_ports.push(format!("{num}/{proto}"));
    }
    if let Some(w) = &c.workdir
        && !w.get_ref().starts_with('/')
    {
        src.err(
            w.span(),
            "workdir must be an absolute path inside the image",
        )?;
    }
    if let Some(u) = &c.user
        && (u.get_ref().is_empty() || u.get_ref().contains(char::is_whitespace))
    {
        src.err(u.span(), "user must be \"NAME\", \"UID\" or \"UID:GID\"")?;
    }
    let config = RuntimeConfig {
        entrypoint: c.entrypoint,
        cmd: c.cmd,
        env,
        user: c.user.map(Spanned::into_inner),
        workdir: c.workdir.map(Spanned::into_inner),
        exposed_ports,
        labels: c.labels,
    };

    let mut smoke = Vec::new();
    for s in raw.smoke {
        if s.command.get_ref().is_empty() {
            src.err(
                s.command.span(),
                "smoke command is empty; give the program and its arguments",
            )?;
        }
        if let Some(p) = &s.expect_output
            && let Err(e) = regex::Regex::new(p.get_ref())
        {
            src.err(
                p.span(),
                format_args!("expect_output is not a valid regular expression: {e}"),
            )?;
        }
        let timeout_secs = match &s.timeout_secs {
            None => 30,
            Some(t) if (1..=3600).contains(t.get_ref()) => *t.get_ref(),
            Some(t) => src.err(t.span(), "timeout_secs must be between 1 and 3600")?,
        };
        smoke.push(SmokeSpec {
            name: s.name.into_inner(),
            command: s.command.into_inner(),
            expect_exit: s.expect_exit,
            expect_output: s.expect_output.map(Spanned::into_inner),
            timeout_secs,
        });
    }

    let debian = match raw.debian {
        None => None,
        Some(d) => {
            let at = src.at(d.span().start);
            let mut packages = Vec::new();
            for p in &d.get_ref().packages {
                let name = p.get_ref();
                if !valid_debian_package(name) {
                    src.err(
                        p.span(),
                        format_args!(
                            "Debian package name {name:?} is invalid; use lowercase letters, digits, '+', '-' and '.', starting with a letter or digit"
                        ),
                    )?;
                }
                if packages.contains(name) {
                    src.err(
                        p.span(),
                        format_args!("Debian package {name:?} is listed twice; list it once"),
                    )?;
                }
                packages.push(name.clone());
            }
            if packages.is_empty() {
                src.err(
                    d.span(),
                    "[debian] packages is empty; list at least one package or remove the table",
                )?;
            }
            let mut exclude = Vec::new();
            for p in &d.get_ref().exclude {
                let name = p.get_ref();
                if !valid_debian_package(name) || packages.contains(name) {
                    src.err(
                        p.span(),
                        format_args!(
                            "Debian package {name:?} cannot be excluded: it is not a valid package name or it is also requested"
                        ),
                    )?;
                }
                exclude.push(name.clone());
            }
            Some(DebianSpec {
                packages,
                exclude,
                at,
            })
        }
    };

    let python = match raw.python {
        None => None,
        Some(p) => {
            let at = src.at(p.span().start);
            let span = p.span();
            let p = p.into_inner();
            let mut requirements = Vec::new();
            let mut names = Vec::new();
            for r in &p.requirements {
                let req = crate::python::requirements::Requirement::parse(r.get_ref())
                    .or_else(|e| src.err(r.span(), format_args!("{e:#}")))?;
                if req.pinned_version().is_none() || req.url.is_some() {
                    src.err(
                        r.span(),
                        format_args!(
                            "requirement {:?} is not pinned; write it as \"NAME==VERSION\" (cargo xtask lock pins its dependencies)",
                            r.get_ref()
                        ),
                    )?;
                }
                if names.contains(&req.key()) {
                    src.err(
                        r.span(),
                        format_args!("distribution {} is listed twice; list it once", req.name),
                    )?;
                }
                names.push(req.key());
                requirements.push(r.get_ref().trim().to_string());
            }
            let app = match &p.app {
                None => None,
                Some(a) => {
                    let s = a.get_ref();
                    if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
                        src.err(
                            a.span(),
                            format_args!("app {s:?} must be a relative folder inside the image folder {dir}/ (no leading '/', no \"..\")"),
                        )?;
                    }
                    Some(s.trim_end_matches('/').to_string())
                }
            };
            let app_dir = match &p.app_dir {
                None => ImagePath::parse("/app").unwrap_or_else(|_| unreachable!()),
                Some(d) => dest(&src, d)?,
            };
            let mut modules = Vec::new();
            for m in &p.modules {
                let ok = m.get_ref().split('.').all(crate::python::is_identifier);
                if !ok {
                    src.err(
                        m.span(),
                        format_args!(
                            "module {:?} is not a dotted Python module name",
                            m.get_ref()
                        ),
                    )?;
                }
                modules.push(m.get_ref().clone());
            }
            if requirements.is_empty() && app.is_none() {
                src.err(
                    span,
                    "[python] has neither requirements nor app; add them or remove the table",
                )?;
            }
            Some(PythonSpec {
                requirements,
                app,
                app_dir,
                modules,
                at,
            })
        }
    };

    let smoke_user = match raw.smoke_user {
        None => None,
        Some(u) => {
            let v = u.get_ref();
            let numeric = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
            let ok = v == "root"
                || match v.split_once(':') {
                    Some((a, b)) => numeric(a) && numeric(b),
                    None => numeric(v),
                };
            if !ok {
                src.err(
                    u.span(),
                    format_args!(
                        "smoke_user {v:?} is neither \"root\" nor UID[:GID]; smoke commands run as the image's user, else nobody, unless this says otherwise"
                    ),
                )?;
            }
            Some(v.clone())
        }
    };
    let mut sources_allow = Vec::new();
    for a in raw.sources.map(|s| s.allow).unwrap_or_default() {
        let v = a.get_ref().trim_end_matches('/');
        let bad = v.is_empty()
            || v.starts_with('/')
            || v.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || v.split('/')
                .next()
                .is_some_and(|c| c == ".git" || c == "target");
        if bad {
            src.err(
                a.span(),
                format_args!(
                    "[sources] allow {v:?} must be a workspace path relative to the root, without \"..\", and not in .git/ or target/"
                ),
            )?;
        }
        sources_allow.push(v.to_string());
    }
    let mut secrets_allow = Vec::new();
    for a in raw.secrets.map(|s| s.allow).unwrap_or_default() {
        secrets_allow.push(dest(&src, &a)?);
    }
    Ok(ImageSpec {
        name,
        dir,
        repository,
        tags,
        base,
        layers,
        config,
        smoke,
        debian,
        python,
        secrets_allow,
        smoke_user,
        sources_allow,
    })
}

fn dest(src: &Source, d: &Spanned<String>) -> Result<ImagePath> {
    ImagePath::parse(d.get_ref()).or_else(|msg| src.err(d.span(), msg))
}

fn mode(src: &Source, m: Option<&Spanned<String>>) -> Result<Option<u32>> {
    let Some(m) = m else { return Ok(None) };
    match u32::from_str_radix(m.get_ref(), 8) {
        Ok(v) if v <= 0o7777 => Ok(Some(v)),
        _ => src.err(
            m.span(),
            format_args!(
                "mode {:?} is invalid; write an octal string such as \"0644\" or \"0755\"",
                m.get_ref()
            ),
        ),
    }
}

fn owner(src: &Source, o: Option<&Spanned<String>>) -> Result<Owner> {
    let Some(o) = o else { return Ok(Owner::ROOT) };
    let parsed = o.get_ref().split_once(':').and_then(|(u, g)| {
        Some(Owner {
            uid: u.parse().ok()?,
            gid: g.parse().ok()?,
        })
    });
    match parsed {
        Some(owner) => Ok(owner),
        None => src.err(
            o.span(),
            format_args!(
                "owner {:?} is invalid; write numeric \"UID:GID\" such as \"0:0\"",
                o.get_ref()
            ),
        ),
    }
}

/// `scratch`, `workspace://NAME` or `REPO@sha256:HEX`. Tag-only references
/// are refused: a tag can move, a digest cannot.
pub fn parse_base(s: &str) -> std::result::Result<BaseRef, String> {
    if s == "scratch" {
        return Ok(BaseRef::Scratch);
    }
    if let Some(image) = s.strip_prefix("workspace://") {
        if !valid_component(image) {
            return Err(format!(
                "base {s:?} names no valid workspace image; write workspace://NAME"
            ));
        }
        return Ok(BaseRef::Workspace {
            image: image.to_string(),
        });
    }
    let Some((name, digest)) = s.split_once('@') else {
        return Err(format!(
            "base image {s:?} is pinned by tag only; pin it by digest (\"{}@sha256:...\") in this file and in lockfiles/bases.lock, or use \"scratch\" or \"workspace://NAME\"",
            repository_of(s)
        ));
    };
    if let Err(e) = digest.parse::<crate::id::Digest>() {
        return Err(format!("base image digest {digest:?} is invalid: {e}"));
    }
    // A reference may carry both a tag and a digest; the digest is what counts.
    let repository = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    };
    if repository.is_empty() {
        return Err(format!("base image {s:?} has no repository before '@'"));
    }
    Ok(BaseRef::Pinned {
        repository: repository.to_string(),
        digest: digest.to_string(),
    })
}

/// Debian policy 5.6.1: at least two characters of `[a-z0-9+.-]`, starting
/// with a letter or digit.
pub fn valid_debian_package(s: &str) -> bool {
    s.len() >= 2
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// `host:5000/repo:tag` -> `host:5000/repo` (the tag is after the last '/').
fn repository_of(reference: &str) -> &str {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => reference,
    }
}

fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"a\"\nrepository = \"p/a\"\n";

    fn err(text: &str) -> String {
        format!("{:#}", parse("images/a/image.toml", text).unwrap_err())
    }

    #[test]
    fn minimal_image_defaults() {
        let spec = parse("images/a/image.toml", MINIMAL).unwrap();
        assert_eq!(spec.dir, "images/a");
        assert_eq!(spec.base, BaseRef::Scratch);
        assert_eq!(spec.tags, vec!["latest"]);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = err("name = \"a\"\nrepository = \"p/a\"\n\n[config]\nentrypointt = []\n");
        assert!(
            e.starts_with("images/a/image.toml:5:1: unknown field `entrypointt`"),
            "{e}"
        );
    }

    #[test]
    fn malformed_toml_names_line() {
        let e = err("name = \"a\"\nrepository = = \"p/a\"\n");
        assert!(e.starts_with("images/a/image.toml:2:"), "{e}");
    }

    #[test]
    fn destination_outside_root_is_refused() {
        let e = err(&format!(
            "{MINIMAL}[[layer]]\nname = \"l\"\ndirs = [{{ dest = \"/etc/../../x\" }}]\n"
        ));
        assert!(
            e.starts_with(
                "images/a/image.toml:5:18: destination \"/etc/../../x\" leaves the image root"
            ),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[[layer]]\nname = \"l\"\ndirs = [{{ dest = \"etc/x\" }}]\n"
        ));
        assert!(e.contains("is not absolute"), "{e}");
    }

    #[test]
    fn tag_only_base_is_refused() {
        let e = err(&format!("{MINIMAL}base = \"debian:bookworm\"\n"));
        assert!(
            e.contains("3:8: base image \"debian:bookworm\" is pinned by tag only"),
            "{e}"
        );
        assert!(e.contains("lockfiles/bases.lock"), "{e}");
    }

    #[test]
    fn bases_parse() {
        let hex = "a".repeat(64);
        assert_eq!(
            parse_base(&format!("reg.test:5000/lib/debian:12@sha256:{hex}")).unwrap(),
            BaseRef::Pinned {
                repository: "reg.test:5000/lib/debian".into(),
                digest: format!("sha256:{hex}")
            }
        );
        assert_eq!(
            parse_base("workspace://base-cc").unwrap(),
            BaseRef::Workspace {
                image: "base-cc".into()
            }
        );
        let e = parse_base("debian@sha256:abc").unwrap_err();
        assert!(
            e.contains("base image digest \"sha256:abc\" is invalid"),
            "{e}"
        );
        assert!(e.contains("a digest has 64"), "{e}");
        let upper = format!("debian@sha256:{}", "A".repeat(64));
        assert!(parse_base(&upper).unwrap_err().contains("lowercase hex"));
    }

    #[test]
    fn modes_and_owners_are_checked() {
        let e = err(&format!(
            "{MINIMAL}[[layer]]\nname = \"l\"\ndirs = [{{ dest = \"/x\", mode = \"0999\" }}]\n"
        ));
        assert!(e.contains("mode \"0999\" is invalid"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[layer]]\nname = \"l\"\ndirs = [{{ dest = \"/x\", owner = \"root\" }}]\n"
        ));
        assert!(e.contains("owner \"root\" is invalid"), "{e}");
    }

    #[test]
    fn image_path_ancestors() {
        let p = ImagePath::parse("/usr/local/bin/hello").unwrap();
        let a: Vec<_> = p.ancestors().map(|p| p.as_str().to_string()).collect();
        assert_eq!(a, ["usr", "usr/local", "usr/local/bin"]);
    }

    #[test]
    fn debian_table_parses_and_is_checked() {
        let text = include_str!("../../images/base-cc/image.toml");
        let spec = parse("images/base-cc/image.toml", text).unwrap();
        let deb = spec.debian.unwrap();
        assert!(deb.packages.contains(&"libc6".to_string()));
        let e = err(&format!(
            "{MINIMAL}[debian]\npackages = [\"libc6\"]\nsuite = \"x\"\n"
        ));
        assert!(
            e.starts_with("images/a/image.toml:5:1: unknown field `suite`"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[debian]\npackages = [\"libc6\", \"Bad_Name\"]\n"
        ));
        assert!(
            e.starts_with("images/a/image.toml:4:22: Debian package name \"Bad_Name\""),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[debian]\npackages = [\"libc6\", \"libc6\"]\n"
        ));
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn python_table_parses_and_is_checked() {
        let ok = parse(
            "images/a/image.toml",
            &format!("{MINIMAL}[python]\nrequirements = [\"python-dateutil==2.9.0.post0\"]\napp = \"app\"\nmodules = [\"yaml\"]\n"),
        )
        .unwrap();
        let p = ok.python.unwrap();
        assert_eq!(p.app_dir.as_str(), "app");
        assert_eq!(p.modules, ["yaml"]);
        let e = err(&format!(
            "{MINIMAL}[python]\nrequirements = [\"six>=1.5\"]\n"
        ));
        assert!(
            e.starts_with("images/a/image.toml:4:17: requirement \"six>=1.5\" is not pinned"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[python]\napp = \"../x\"\n"));
        assert!(e.contains("must be a relative folder"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[python]\napp = \"a\"\nmodules = [\"a-b\"]\n"
        ));
        assert!(e.contains("not a dotted Python module name"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[debian]\npackages = [\"libc6\"]\nexclude = [\"libc6\"]\n"
        ));
        assert!(e.contains("cannot be excluded"), "{e}");
    }

    #[test]
    fn the_sample_image_parses() {
        let text = include_str!("../../images/hello/image.toml");
        let spec = parse("images/hello/image.toml", text).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.layers.len(), 2);
        assert_eq!(spec.smoke.len(), 2);
    }
}

/// Hostile `image.toml` files (docs/fault-matrix-parsers.md): no panic, and every error
/// names the file.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated_text};
    use proptest::prelude::*;

    const PATH: &str = "images/x/image.toml";
    const SAMPLES: &[&str] = &[
        include_str!("../../images/hello/image.toml"),
        include_str!("../../images/pyhello/image.toml"),
        include_str!("../../images/base-cc/image.toml"),
        include_str!("../../images/base-python/image.toml"),
    ];

    fn check(text: &str) -> Result<(), TestCaseError> {
        if let Err(e) = parse(PATH, text) {
            clear_error(&e, PATH)?;
        }
        Ok(())
    }

    #[test]
    fn the_samples_parse() {
        for s in SAMPLES {
            parse(PATH, s).unwrap();
        }
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn image_toml_arbitrary_text(text in any::<String>()) {
            check(&text)?;
        }

        #[test]
        fn image_toml_mutated(text in prop::sample::select(SAMPLES).prop_flat_map(mutated_text)) {
            check(&text)?;
        }

        #[test]
        fn base_references_arbitrary(s in any::<String>()) {
            let _ = parse_base(&s);
            let _ = ImagePath::parse(&s);
        }
    }
}
