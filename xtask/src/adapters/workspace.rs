//! Adapters to the workspace: image definitions on disk, git facts, cargo.
//!
//! Every subprocess goes through xshell (`cmd!`), one argv element per
//! variable, never a shell string.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use lane_core::oci::SourceFacts;
use lane_core::spec::{self, BaseRef, ImageSpec, Link};

/// The workspace the lane works on.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Canonical path of the workspace root (where `images/` is).
    pub root: PathBuf,
}

impl Workspace {
    /// The committed release policy (ci/release-policy.toml), parsed, and
    /// the digest of its bytes.
    pub fn policy(&self) -> Result<(lane_core::gates::Policy, lane_core::id::Digest)> {
        use lane_core::gates::POLICY_PATH;
        let path = self.root.join(POLICY_PATH);
        let bytes = std::fs::read(&path).with_context(|| {
            format!("reading {POLICY_PATH}; every release needs a policy file (see README.md)")
        })?;
        let text = String::from_utf8(bytes.clone())
            .with_context(|| format!("{POLICY_PATH} is not UTF-8"))?;
        Ok((
            lane_core::gates::parse_policy(POLICY_PATH, &text)?,
            lane_core::id::Digest::of(&bytes),
        ))
    }

    /// Finds the workspace: `explicit` if given, else the nearest ancestor of
    /// the current directory holding both `Cargo.toml` and `images/`.
    pub fn locate(explicit: Option<&Path>) -> Result<Workspace> {
        let start = match explicit {
            Some(p) => p.to_path_buf(),
            None => std::env::current_dir().context("reading the current directory")?,
        };
        let start = start
            .canonicalize()
            .with_context(|| format!("workspace directory {} does not exist", start.display()))?;
        if explicit.is_some() {
            if !start.join("images").is_dir() {
                bail!(
                    "{} has no images/ folder; point --workspace at the repository root",
                    start.display()
                );
            }
            return Ok(Workspace { root: start });
        }
        for dir in start.ancestors() {
            if dir.join("Cargo.toml").is_file() && dir.join("images").is_dir() {
                return Ok(Workspace {
                    root: dir.to_path_buf(),
                });
            }
        }
        bail!(
            "no workspace found above {} (looked for a folder with Cargo.toml and images/); run from the repository or pass --workspace DIR",
            start.display()
        )
    }

    /// Reads and validates every `images/*/image.toml`, sorted by name.
    pub fn load_images(&self) -> Result<Vec<ImageSpec>> {
        let dir = self.root.join("images");
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let toml_path = entry.path().join("image.toml");
            if toml_path.is_file() {
                found.push((entry.file_name().to_string_lossy().into_owned(), toml_path));
            }
        }
        found.sort();
        let mut images = Vec::new();
        for (folder, path) in found {
            let rel = format!("images/{folder}/image.toml");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {rel}"))?;
            let spec = spec::parse(&rel, &text)?;
            if spec.name != folder {
                bail!(
                    "{rel}: image name {:?} differs from its folder images/{folder}/; rename one so they match",
                    spec.name
                );
            }
            images.push(spec);
        }
        if images.is_empty() {
            bail!(
                "no images/*/image.toml found in {}; add one (see README.md)",
                self.root.display()
            );
        }
        Ok(images)
    }

    /// The committed source URL (`[workspace.metadata.lane] source`).
    pub fn source_url(&self) -> Result<String> {
        let text =
            std::fs::read_to_string(self.root.join("Cargo.toml")).context("reading Cargo.toml")?;
        let value: toml::Table = toml::from_str(&text).context("parsing Cargo.toml")?;
        Ok(value
            .get("workspace")
            .and_then(|w| w.get("metadata"))
            .and_then(|m| m.get("lane"))
            .and_then(|l| l.get("source"))
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_string())
    }
}

/// Selects the requested images (all when `names` is empty) plus every
/// workspace base they need, in build order (bases first).
pub fn select(images: &[ImageSpec], names: &[String]) -> Result<Vec<ImageSpec>> {
    let by_name: BTreeMap<&str, &ImageSpec> = images.iter().map(|i| (i.name.as_str(), i)).collect();
    for n in names {
        if !by_name.contains_key(n.as_str()) {
            bail!(
                "no image named {n:?}; the workspace has: {}",
                by_name.keys().copied().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let wanted: Vec<&str> = if names.is_empty() {
        by_name.keys().copied().collect()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for n in wanted {
        visit(n, &by_name, &mut Vec::new(), &mut done, &mut order)?;
    }
    Ok(order)
}

fn visit<'a>(
    name: &'a str,
    by_name: &BTreeMap<&'a str, &'a ImageSpec>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    order: &mut Vec<ImageSpec>,
) -> Result<()> {
    if done.contains(name) {
        return Ok(());
    }
    if stack.contains(&name) {
        bail!(
            "images form a base cycle: {} -> {name}; break the cycle",
            stack.join(" -> ")
        );
    }
    let spec = by_name[name];
    if let BaseRef::Workspace { image } = &spec.base {
        let Some((base_name, _)) = by_name.get_key_value(image.as_str()) else {
            bail!(
                "{}/image.toml: base workspace://{image} names no image of this workspace; add images/{image}/image.toml or fix base",
                spec.dir
            );
        };
        stack.push(name);
        visit(base_name, by_name, stack, done, order)?;
        stack.pop();
    }
    done.insert(name);
    order.push(spec.clone());
    Ok(())
}

/// Git facts of the checkout: HEAD, its commit time, whether the tree is clean.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GitFacts {
    pub revision: String,
    pub commit_time: u64,
    pub dirty: bool,
}

pub fn git_facts(root: &Path) -> Result<GitFacts> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let revision = cmd!(sh, "git rev-parse --verify HEAD").quiet().ignore_stderr().read().with_context(|| {
        format!(
            "{} is not a git checkout with a commit; the lane takes the revision and SOURCE_DATE_EPOCH from the last commit (git init && git commit first)",
            root.display()
        )
    })?;
    let time = cmd!(sh, "git log -1 --format=%ct").quiet().read()?;
    let commit_time = time
        .trim()
        .parse()
        .with_context(|| format!("unexpected commit time {time:?} from git"))?;
    let status = cmd!(sh, "git status --porcelain").quiet().read()?;
    Ok(GitFacts {
        revision: revision.trim().to_string(),
        commit_time,
        dirty: !status.trim().is_empty(),
    })
}

/// The git facts a CI token's claims must match: HEAD, the repository of
/// the `origin` remote, and the refs at HEAD (the branch checked out, and
/// every branch, tag or pull-request ref pointing at HEAD; origin's
/// remote-tracking refs count as the refs they track, as actions/checkout
/// leaves them).
pub fn checkout(root: &Path) -> Result<lane_core::identity::Checkout> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let sha = cmd!(sh, "git rev-parse --verify HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| format!("{} is not a git checkout with a commit", root.display()))?;
    let repository = cmd!(sh, "git remote get-url origin")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .and_then(|url| lane_core::identity::repository_of_url(&url));
    let mut refs: Vec<String> = Vec::new();
    if let Ok(branch) = cmd!(sh, "git symbolic-ref -q HEAD")
        .quiet()
        .ignore_stderr()
        .read()
    {
        refs.push(branch.trim().to_string());
    }
    let at_head = cmd!(sh, "git for-each-ref --points-at HEAD --format=%(refname)")
        .quiet()
        .read()
        .context("listing the refs at HEAD (git for-each-ref)")?;
    for r in at_head.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let r = if let Some(b) = r.strip_prefix("refs/remotes/origin/") {
            format!("refs/heads/{b}")
        } else if let Some(p) = r.strip_prefix("refs/remotes/pull/") {
            format!("refs/pull/{p}")
        } else {
            r.to_string()
        };
        if r != "refs/heads/HEAD" && !refs.contains(&r) {
            refs.push(r);
        }
    }
    Ok(lane_core::identity::Checkout {
        sha: sha.trim().to_string(),
        repository,
        refs,
    })
}

/// The source tree's files as git sees them: tracked, plus untracked files
/// that are not ignored (so `target/` never counts). Workspace-relative.
pub fn source_files(root: &Path) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let list = cmd!(sh, "git ls-files -z --cached --others --exclude-standard")
        .quiet()
        .read()
        .context("listing the source tree with git ls-files")?;
    Ok(list
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// Source facts for the images, from the inputs alone: the time is
/// `SOURCE_DATE_EPOCH` when set, else [`lane_core::oci::FIXED_EPOCH`],
/// never the commit's; the revision goes into the image only when the
/// policy (if there is one) sets `[identity] stamp = "revision"`. The git
/// facts (HEAD, its time, a clean tree) are returned for the provenance and
/// the record.
pub fn source_facts(ws: &Workspace) -> Result<(SourceFacts, GitFacts)> {
    let git = git_facts(&ws.root)?;
    let sde = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => lane_core::oci::FIXED_EPOCH,
    };
    let stamp = if ws.root.join(lane_core::gates::POLICY_PATH).is_file() {
        ws.policy()?.0.stamp
    } else {
        lane_core::gates::Stamp::None
    };
    Ok((
        SourceFacts {
            revision: (stamp == lane_core::gates::Stamp::Revision).then(|| git.revision.clone()),
            source_date_epoch: sde,
            source_url: ws.source_url()?,
        },
        git,
    ))
}

/// The host's target triple and rustc version, from `rustc -vV`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Toolchain {
    pub triple: String,
    pub rustc: String,
}

pub fn toolchain() -> Result<Toolchain> {
    let sh = Shell::new()?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = cmd!(sh, "{rustc} -vV")
        .quiet()
        .read()
        .context("running rustc -vV")?;
    let triple = out
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV printed no host line")?
        .to_string();
    let rustc = out.lines().next().unwrap_or_default().to_string();
    Ok(Toolchain { triple, rustc })
}

/// One binary the images need from the workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct BinaryRequest {
    pub package: String,
    pub bin: String,
    pub link: Link,
}

/// Checks every requested binary against `cargo metadata`: the package must
/// be a workspace member with a binary target of that name.
pub fn check_binaries(ws: &Workspace, images: &[ImageSpec]) -> Result<BTreeSet<BinaryRequest>> {
    let mut wanted = BTreeSet::new();
    let mut at = BTreeMap::new();
    for img in images {
        for l in &img.layers {
            for b in &l.binaries {
                let req = BinaryRequest {
                    package: b.package.clone(),
                    bin: b.bin.clone(),
                    link: b.link,
                };
                at.entry((b.package.clone(), b.bin.clone()))
                    .or_insert_with(|| format!("{}/image.toml", img.dir));
                wanted.insert(req);
            }
        }
    }
    if wanted.is_empty() {
        return Ok(wanted);
    }
    let meta = cargo_metadata::MetadataCommand::new()
        .current_dir(&ws.root)
        .no_deps()
        .exec()
        .context("running cargo metadata on the workspace")?;
    let members: BTreeMap<String, Vec<String>> = meta
        .workspace_packages()
        .iter()
        .map(|p| {
            let bins = p
                .targets
                .iter()
                .filter(|t| t.is_bin())
                .map(|t| t.name.clone())
                .collect();
            (p.name.to_string(), bins)
        })
        .collect();
    for req in &wanted {
        let file = &at[&(req.package.clone(), req.bin.clone())];
        let Some(bins) = members.get(&req.package) else {
            bail!(
                "{file}: package {:?} is not a member of the cargo workspace (members: {}); add it to [workspace] members or fix the package name",
                req.package,
                members.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        if !bins.contains(&req.bin) {
            bail!(
                "{file}: package {:?} has no binary {:?} (it has: {}); fix bin or add a [[bin]] target",
                req.package,
                req.bin,
                if bins.is_empty() {
                    "none".to_string()
                } else {
                    bins.join(", ")
                }
            );
        }
    }
    Ok(wanted)
}

/// The folders (relative to the root, `""` for the root itself) of the
/// workspace's own Rust packages: what a built binary is made of besides
/// Cargo.lock's registry crates and the toolchain. `None` when Cargo.lock
/// names a local package that is not a member (a path dependency outside
/// the workspace, which git's index of this checkout does not cover).
pub fn rust_sources(ws: &Workspace) -> Result<Option<Vec<String>>> {
    let meta = cargo_metadata::MetadataCommand::new()
        .current_dir(&ws.root)
        .no_deps()
        .exec()
        .context("running cargo metadata on the workspace")?;
    let mut dirs = Vec::new();
    let mut names = BTreeSet::new();
    for p in meta.workspace_packages() {
        let dir = p
            .manifest_path
            .parent()
            .map(|d| d.as_std_path().to_path_buf());
        let Some(rel) = dir.as_deref().and_then(|d| d.strip_prefix(&ws.root).ok()) else {
            return Ok(None);
        };
        dirs.push(rel.to_string_lossy().into_owned());
        names.insert(p.name.to_string());
    }
    let lock: toml::Table = match fs::read_to_string(ws.root.join("Cargo.lock")) {
        Ok(text) => text.parse().context("parsing Cargo.lock")?,
        Err(_) => return Ok(None),
    };
    let outside = lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter(|p| p.get("source").is_none())
        .filter_map(|p| p.get("name")?.as_str())
        .any(|n| !names.contains(n));
    Ok((!outside).then_some(dirs))
}

/// The environment variables a hermetic cargo build keeps from the caller.
const ENV_ALLOW: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
];

/// Where a built binary ends up.
pub fn binary_path(target_dir: &Path, triple: &str, link: Link, bin: &str) -> PathBuf {
    target_dir
        .join(link_dir(link))
        .join(triple)
        .join("release")
        .join(bin)
}

fn link_dir(link: Link) -> &'static str {
    match link {
        Link::Static => "static",
        Link::Dynamic => "dynamic",
    }
}

/// The rustflags of a hermetic build. Path prefixes are remapped so neither
/// the checkout directory nor the cargo home leaks into the binaries.
pub fn rustflags(root: &Path, link: Link) -> Vec<String> {
    let mut flags = vec![format!("--remap-path-prefix={}=/workspace", root.display())];
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Ok(home) = cargo_home {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    if link == Link::Static {
        flags.extend(["-C".into(), "target-feature=+crt-static".into()]);
    }
    flags
}

/// Runs `cargo build --locked --release` for the requested binaries with a
/// cleared environment (allow-list), SOURCE_DATE_EPOCH set and path prefixes
/// remapped. One cargo invocation per link mode, each in its own target dir.
pub fn cargo_build(
    ws: &Workspace,
    target_dir: &Path,
    tc: &Toolchain,
    sde: u64,
    bins: &BTreeSet<BinaryRequest>,
    quiet: bool,
    umask: Option<u32>,
    cancel: Option<&Cancel>,
) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(&ws.root);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for link in [Link::Static, Link::Dynamic] {
        let group: Vec<&BinaryRequest> = bins.iter().filter(|b| b.link == link).collect();
        if group.is_empty() {
            continue;
        }
        let mut args: Vec<String> = Vec::new();
        for b in &group {
            args.extend([
                "--package".into(),
                b.package.clone(),
                "--bin".into(),
                b.bin.clone(),
            ]);
        }
        let dir = target_dir.join(link_dir(link));
        let triple = &tc.triple;
        let flags = rustflags(&ws.root, link).join("\x1f");
        let quiet_flag = if quiet { Some("--quiet") } else { None };
        let mut c = cmd!(
            sh,
            "{cargo} build --locked --release --target {triple} --target-dir {dir} {quiet_flag...} {args...}"
        )
        .quiet()
        .env_clear();
        for key in ENV_ALLOW {
            if let Ok(v) = std::env::var(key) {
                c = c.env(key, v);
            }
        }
        c = c
            .env("CARGO_ENCODED_RUSTFLAGS", flags)
            .env("SOURCE_DATE_EPOCH", sde.to_string())
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .env("CARGO_TERM_COLOR", "never");
        let what = || {
            format!(
                "cargo build of {} failed (hermetic environment, --locked); fix the build error above, or run cargo update if Cargo.lock is stale",
                group
                    .iter()
                    .map(|b| format!("{}:{}", b.package, b.bin))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut c = std::process::Command::from(c);
        if let Some(mask) = umask {
            use std::os::unix::process::CommandExt;
            // Only the child's umask: other threads of the lane keep theirs.
            // SAFETY: umask(2) is async-signal-safe and allocates nothing.
            unsafe {
                c.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let status = match cancel {
            None => c.status().with_context(what)?,
            Some(cancel) => run_cancellable(c, cancel).with_context(what)?,
        };
        if !status.success() {
            bail!("{} ({status})", what());
        }
    }
    Ok(())
}

/// Waits for `child` (the leader of process group `group`), killing the
/// group when `cancel` is set; the group is forgotten by the signal
/// handler either way.
fn wait_or_kill(
    child: &mut std::process::Child,
    group: i32,
    cancel: &Cancel,
) -> Result<std::process::ExitStatus> {
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Ok(status);
        }
        if cancel.is_cancelled() {
            // SAFETY: kill(2) with a negative pid signals the group we made.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            break Err(anyhow::anyhow!("cancelled: no longer needed"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    crate::adapters::signals::disown_group(group);
    status
}

/// A flag that stops background work that is no longer needed (the
/// reproducible gate's second build, when every image's earlier proof is
/// carried over): checked between steps, and a running cargo is killed.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// An error when cancelled: stops the work at a step boundary.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            bail!("cancelled: no longer needed");
        }
        Ok(())
    }

    /// Runs `f` with `cancel` as this thread's current one: the programs
    /// it runs through [`output_cancellable`] are killed when it is
    /// cancelled (`build::in_parallel` hands it to its threads).
    pub fn scope<R>(cancel: Option<&Cancel>, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.replace(cancel.cloned());
        let r = f();
        CURRENT.set(previous);
        r
    }

    /// This thread's current cancel, if any ([`Cancel::scope`]).
    pub fn current() -> Option<Cancel> {
        CURRENT.with_borrow(|c| c.clone())
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Cancel>> = const { std::cell::RefCell::new(None) };
}

/// Runs `c` and captures its output, as `Command::output`; under a current
/// [`Cancel`] ([`Cancel::scope`]) it runs in a process group of its own,
/// killed when that is cancelled (an error then).
pub fn output_cancellable(mut c: std::process::Command) -> Result<std::process::Output> {
    let Some(cancel) = Cancel::current() else {
        return Ok(c.output()?);
    };
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn()?;
    let group = child.id() as i32;
    crate::adapters::signals::own_group(group);
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = wait_or_kill(&mut child, group, &cancel);
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    Ok(std::process::Output {
        status: status?,
        stdout,
        stderr,
    })
}

/// Runs `c` in a process group of its own, so that a cancel kills it and
/// every compiler it started; the signal handler kills the group too.
fn run_cancellable(
    mut c: std::process::Command,
    cancel: &Cancel,
) -> Result<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt;
    c.process_group(0);
    let mut child = c.spawn()?;
    let group = child.id() as i32;
    crate::adapters::signals::own_group(group);
    let status = wait_or_kill(&mut child, group, cancel);
    status
}
