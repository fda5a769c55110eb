//! Shared harness of the end-to-end tests: temporary workspaces (a copy of
//! this repository, or a small files-only one), git commits with fixed dates,
//! and running the `xtask` binary on them.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

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

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "lane-test-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
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

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = run(Command::new("git")
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
        .env("GIT_COMMITTER_DATE", "2026-01-02T03:04:05Z"));
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

    /// Runs `xtask --workspace ROOT ARGS...`.
    pub fn xtask(&self, args: &[&str]) -> Output {
        self.xtask_env(args, &[])
    }

    pub fn xtask_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.arg("--workspace")
            .arg(&self.root)
            .args(args)
            .current_dir(&self.root)
            // A local builder unless a test sets a CI identity itself.
            .env_remove("GITHUB_ACTIONS")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    /// Runs xtask and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(
            out.status.success(),
            "xtask {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs xtask and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(
            !out.status.success(),
            "xtask {args:?} should have failed:\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `build --json` of the given images, parsed.
    pub fn build_json(&self, images: &[&str]) -> serde_json::Value {
        let mut args = vec!["build", "--json"];
        args.extend_from_slice(images);
        serde_json::from_str(&self.ok(&args)).expect("build --json prints JSON")
    }
}

/// `sha256:<hex>` of bytes, computed independently of the lane (sha256sum).
pub fn sha256_hex_of_file(path: &Path) -> String {
    registry::sha256_of(
        &fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
}

/// Finds `image` in `build --json` output.
pub fn image<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {report}"))
}
pub mod oidc;
pub mod registry;
