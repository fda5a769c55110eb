//! Shared harness of the end-to-end tests: temporary workspaces (a copy of
//! this repository, or a small files-only one), git commits with fixed dates,
//! running the `xtask` binary on them, reading its outputs and JSON reports,
//! and images in the Docker Engine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use registry::Creds;

/// The repository this test binary was built from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A word no other call, in this process or another, returns:
/// `PID-COUNTER-NANOS`.
pub fn unique() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{n}-{nanos}", std::process::id())
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lane-test-{label}-{}", unique()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir.canonicalize().unwrap())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, panicking with its output if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and asserts it succeeded; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", show(&out));
    out
}

/// Runs a command, asserts it succeeded and returns its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

/// stdout of a run, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of a run, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout then stderr of a run: everything it printed.
pub fn printed(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// Status, stdout and stderr of a run, for messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// The JSON report a `--json` run printed on stdout; panics with the run's
/// output when there is none.
pub fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report on stdout ({e}):\n{}", show(out)))
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    stdout_of(
        Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=lane-test",
                "-c",
                "user.email=lane-test@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env("GIT_AUTHOR_DATE", "2026-01-02T03:04:05Z")
            .env("GIT_COMMITTER_DATE", "2026-01-02T03:04:05Z"),
    )
}

/// A temporary workspace the lane can build.
pub struct Fixture {
    _dir: TempDir,
    pub root: PathBuf,
}

impl Fixture {
    /// A copy of this repository's tracked and untracked-but-not-ignored
    /// files, committed in a fresh git repository.
    pub fn copy_of_repo(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let root = dir.path().join("ws");
        let src = repo_root();
        let list = git(
            &src,
            &[
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
        );
        for rel in list.split('\0').filter(|s| !s.is_empty()) {
            let from = src.join(rel);
            if !from.is_file() {
                continue;
            }
            let to = root.join(rel);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(&from, &to).unwrap();
        }
        let f = Fixture { _dir: dir, root };
        f.init_git();
        f
    }

    /// A second checkout of `other`'s repository (`git clone`), in a
    /// directory of its own: another runner of the same project.
    pub fn clone_of(other: &Fixture, label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let root = dir.path().join("ws");
        git(
            dir.path(),
            &["clone", "-q", other.root.to_str().unwrap(), "ws"],
        );
        Fixture { _dir: dir, root }
    }

    /// A workspace with no Rust payload: a Cargo.toml and the given files.
    pub fn with_files(label: &str, files: &[(&str, &str)]) -> Fixture {
        let dir = TempDir::new(label);
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("images")).unwrap();
        let f = Fixture { _dir: dir, root };
        f.write(
            "Cargo.toml",
            "[workspace]\nmembers = []\n\n[workspace.metadata.lane]\nsource = \"https://git.example.com/fixture\"\n",
        );
        f.write(".gitignore", "/target\n");
        for (path, text) in files {
            f.write(path, text);
        }
        f.init_git();
        f
    }

    fn init_git(&self) {
        git(&self.root, &["init", "-q", "-b", "main"]);
        self.commit("fixture");
    }

    pub fn commit(&self, message: &str) {
        git(&self.root, &["add", "-A"]);
        git(
            &self.root,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// The text of the file `rel`.
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    /// Replaces the first `from` in the file `rel` with `to`; the file
    /// must hold a `from`.
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert!(
            text.contains(from),
            "the fixture edit must apply: no {from:?} in {rel}"
        );
        self.write(rel, &text.replacen(from, to, 1));
    }

    /// The command `xtask --workspace ROOT ARGS...`, run in ROOT by a local
    /// builder (a test that wants a CI identity sets it itself).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.arg("--workspace")
            .arg(&self.root)
            .args(args)
            .current_dir(&self.root)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN");
        cmd
    }

    /// Runs `xtask --workspace ROOT ARGS...`.
    pub fn xtask(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Runs xtask and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(
            out.status.success(),
            "xtask {args:?} failed: {}",
            show(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs xtask and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(
            !out.status.success(),
            "xtask {args:?} should have failed: {}",
            show(&out)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `build --json` of the given images, parsed.
    pub fn build_json(&self, images: &[&str]) -> Value {
        let mut args = vec!["build", "--json"];
        args.extend_from_slice(images);
        serde_json::from_str(&self.ok(&args)).expect("build --json prints JSON")
    }

    /// `release --json ARGS` (with `creds`' isolated credential setup when
    /// given): the run and the report it printed, which every release
    /// prints, accepted or rejected.
    pub fn release(&self, creds: Option<&Creds>, args: &[&str]) -> (Output, Value) {
        let mut all = vec!["release", "--json"];
        all.extend_from_slice(args);
        let out = match creds {
            Some(c) => c.xtask(self, &all),
            None => self.xtask(&all),
        };
        let report = report(&out);
        (out, report)
    }
}

/// Makes the sample service print the directory it was built in, and
/// commits: its builds are no longer reproducible.
pub fn embed_build_path(f: &Fixture) {
    f.edit(
        "images/hello/src/main.rs",
        "println!(\"hello {}\", env!(\"CARGO_PKG_VERSION\"));",
        "println!(\"hello {} built in {}\", env!(\"CARGO_PKG_VERSION\"), env!(\"CARGO_MANIFEST_DIR\"));",
    );
    f.commit("embed the build path");
}

/// `sha256:<hex>` of bytes, computed independently of the lane (sha256sum).
pub fn sha256_hex_of_file(path: &Path) -> String {
    registry::sha256_of(
        &fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
}

/// The entry of the JSON array `list` whose `key` is `value`.
pub fn entry<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no entry with {key} = {value:?} in {list}"))
}

/// A JSON array of strings.
pub fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The string `key` of every entry of the JSON array `list`.
pub fn column(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|e| e[key].as_str().unwrap().to_string())
        .collect()
}

/// Finds `name` in `build --json` output.
pub fn image<'a>(report: &'a Value, name: &str) -> &'a Value {
    entry(&report["images"], "name", name)
}

/// Finds the image `name` in a report that names images `image` (release,
/// publish, drift).
pub fn report_image<'a>(report: &'a Value, name: &str) -> &'a Value {
    entry(&report["images"], "image", name)
}

/// The sample service in a release report.
pub fn hello(report: &Value) -> &Value {
    report_image(report, "hello")
}

/// A gate of a released image's decision.
pub fn gate<'a>(image: &'a Value, name: &str) -> &'a Value {
    entry(&image["decision"]["gates"], "gate", name)
}

/// Runs the docker CLI.
pub fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

/// An image tag in the Docker Engine, removed (with `rmi -f`) on drop.
pub struct DockerImage(pub String);

impl DockerImage {
    /// `docker run --rm --network none --entrypoint PROGRAM IMAGE ARGS...`,
    /// given at most 60 s.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run(Command::new("timeout")
            .args(["60", "docker", "run", "--rm", "--network", "none"])
            .args(["--entrypoint", program, &self.0])
            .args(args))
    }
}

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

pub mod apt;
pub mod oidc;
pub mod registry;

/// A files-only workspace (image.toml `image` in images/files, with the
/// host's static /sbin/ldconfig as its program, so smoke and drift have
/// something real to run) whose policy trusts a fresh signing key made with
/// `cargo xtask keygen`. Returns the fixture, the key folder (kept alive)
/// and the private key's path.
pub fn signed_files_workspace(label: &str, image: &str) -> (Fixture, TempDir, String) {
    let f = Fixture::with_files(
        label,
        &[
            ("images/files/image.toml", image),
            ("images/files/data/one.txt", "one\n"),
            ("Cargo.lock", "version = 4\n"),
        ],
    );
    fs::copy("/sbin/ldconfig", f.path("images/files/data/ldconfig"))
        .expect("the host's static /sbin/ldconfig (Debian libc-bin)");
    let keys = TempDir::new("keys");
    let out = f.ok(&["keygen", "--out", keys.path().to_str().unwrap(), "--json"]);
    let k: Value = serde_json::from_str(&out).unwrap();
    let public = fs::read_to_string(k["public_key"].as_str().unwrap()).unwrap();
    f.write(
        "ci/release-policy.toml",
        &format!("version = 1\n\n[signing]\ntrusted_keys = [\"\"\"\n{public}\"\"\"]\n"),
    );
    f.commit("policy trusts the lane's key");
    let key = k["private_key"].as_str().unwrap().to_string();
    (f, keys, key)
}
