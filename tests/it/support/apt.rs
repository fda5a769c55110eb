//! An apt of the test's own: flat `file:` repositories made from the .debs
//! a lock pins, apt's state in a temporary folder, and an `APT_CONFIG` that
//! points the lane's apt at them. The machine's apt configuration and
//! lists are not touched, and what the machine's index offers today plays
//! no part: a test decides which versions its index offers.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{TempDir, run_ok, sha256_hex_of_file, stdout};

/// One locked package, as the test's index needs it.
struct Pinned {
    name: String,
    version: String,
    deb: PathBuf,
}

/// A test apt: `main` holds the locked .debs (less those left out),
/// `security` offers the newer versions asked for: each a copy of the
/// locked .deb whose ar members say it was built at [`NEWER_BUILT`].
pub struct TestApt {
    dir: TempDir,
}

/// When the security suite's updates were built (their ar members'
/// mtime): 2024-01-01T00:00:00Z, a fixed date.
pub const NEWER_BUILT: i64 = 1_704_067_200;

/// `deb` with the mtime of every ar member set to `at`.
fn rebuilt_at(deb: &[u8], at: i64) -> Vec<u8> {
    let mut out = deb.to_vec();
    let mut pos = 8; // after "!<arch>\n"
    while pos + 60 <= out.len() {
        let size: usize = std::str::from_utf8(&out[pos + 48..pos + 58])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        out[pos + 16..pos + 28].copy_from_slice(format!("{at:<12}").as_bytes());
        pos += 60 + size + size % 2;
    }
    out
}

impl TestApt {
    /// Makes the repositories from `lock_text` (lockfiles/debian.lock) and
    /// the lane's verified .deb cache `debs` (`target/lane-cache/debs`,
    /// filled by a `lock --check` or a build); `newer` lists (package,
    /// version) offered by the security suite; `missing` lists packages
    /// whose .deb the main repository does not serve (its index still names
    /// them, as a mirror that lost a file). Runs `apt-get update` on them.
    pub fn new(lock_text: &str, debs: &Path, newer: &[(&str, &str)], missing: &[&str]) -> TestApt {
        let dir = TempDir::new("apt");
        let root = dir.path().to_path_buf();
        let lock: toml::Value = toml::from_str(lock_text).unwrap();
        let mut pinned = Vec::new();
        for p in lock["package"].as_array().unwrap() {
            let sha = p["sha256"].as_str().unwrap();
            let hex = sha.strip_prefix("sha256:").unwrap();
            let deb = debs.join(format!("{hex}.deb"));
            assert!(
                deb.is_file(),
                "{} is not in the lane's cache",
                deb.display()
            );
            pinned.push(Pinned {
                name: p["name"].as_str().unwrap().to_string(),
                version: p["version"].as_str().unwrap().to_string(),
                deb,
            });
        }
        let mut main = String::new();
        let mut security = String::new();
        for p in &pinned {
            let file = format!("pool/{}_{}.deb", p.name, p.version.replace(':', "%3a"));
            let control = control(&p.deb);
            if !missing.contains(&p.name.as_str()) {
                let to = root.join("main").join(&file);
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                fs::copy(&p.deb, &to).unwrap();
            }
            let size = fs::metadata(&p.deb).unwrap().len();
            let hex = hex_of(&p.deb);
            writeln!(
                main,
                "{}Filename: {file}\nSize: {size}\nSHA256: {hex}\n",
                control
            )
            .unwrap();
            if let Some((_, v)) = newer.iter().find(|(n, _)| *n == p.name) {
                let bumped = control.replace(
                    &format!("Version: {}\n", p.version),
                    &format!("Version: {v}\n"),
                );
                let file = format!("pool/{}_{}.deb", p.name, v.replace(':', "%3a"));
                let to = root.join("security").join(&file);
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                fs::write(&to, rebuilt_at(&fs::read(&p.deb).unwrap(), NEWER_BUILT)).unwrap();
                writeln!(
                    security,
                    "{bumped}Filename: {file}\nSize: {}\nSHA256: {}\n",
                    fs::metadata(&to).unwrap().len(),
                    hex_of(&to)
                )
                .unwrap();
            }
        }
        for n in newer {
            assert!(
                pinned.iter().any(|p| p.name == n.0),
                "{} is not locked",
                n.0
            );
        }
        repository(&root.join("main"), &main, "bookworm", "Debian");
        repository(
            &root.join("security"),
            &security,
            "bookworm-security",
            "Debian-Security",
        );
        fs::create_dir_all(root.join("sources.list.d")).unwrap();
        fs::create_dir_all(root.join("lists/partial")).unwrap();
        fs::create_dir_all(root.join("cache/archives/partial")).unwrap();
        fs::write(
            root.join("sources.list"),
            format!(
                "deb [trusted=yes] file:{0}/main bookworm main\ndeb [trusted=yes] file:{0}/security bookworm-security main\n",
                root.display()
            ),
        )
        .unwrap();
        fs::write(
            root.join("apt.conf"),
            format!(
                "Dir::Etc::SourceList \"{0}/sources.list\";\nDir::Etc::SourceParts \"{0}/sources.list.d\";\nDir::State::Lists \"{0}/lists\";\nDir::Cache \"{0}/cache\";\nAPT::Sandbox::User \"root\";\nAcquire::Languages \"none\";\n",
                root.display()
            ),
        )
        .unwrap();
        let apt = TestApt { dir };
        run_ok(apt.env(Command::new("apt-get").args(["update", "-qq"])));
        apt
    }

    /// The `APT_CONFIG` file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("apt.conf")
    }

    /// `cmd` with its apt pointed at this one.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("APT_CONFIG", self.config())
    }
}

/// The sha256 of a file, in hex.
fn hex_of(path: &Path) -> String {
    sha256_hex_of_file(path)
        .trim_start_matches("sha256:")
        .to_string()
}

/// The control fields of a .deb, read by dpkg-deb (not by the lane).
fn control(deb: &Path) -> String {
    let out = run_ok(Command::new("dpkg-deb").arg("-f").arg(deb));
    let mut text = stdout(&out);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// A repository laid out as Debian's archive: the `Packages` of `main` for
/// amd64 (architecture `all` included, as in the archive) and a `Release`
/// naming it, under `dists/CODENAME/`.
fn repository(dir: &Path, packages: &str, codename: &str, label: &str) {
    let dists = dir.join("dists").join(codename);
    let index = dists.join("main/binary-amd64/Packages");
    fs::create_dir_all(index.parent().unwrap()).unwrap();
    fs::write(&index, packages).unwrap();
    let hex = hex_of(&index);
    fs::write(
        dists.join("Release"),
        format!(
            "Origin: Debian\nLabel: {label}\nSuite: {codename}\nCodename: {codename}\nArchitectures: amd64 all\nComponents: main\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n {hex} {} main/binary-amd64/Packages\n",
            packages.len()
        ),
    )
    .unwrap();
}
