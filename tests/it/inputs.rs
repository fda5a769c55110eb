//! Identity and verdict from the inputs alone (issue 25): the lock is the
//! pin (an index that moved changes no verdict and no digest; what it
//! offers now is a report), a pinned .deb the mirror lacks is named with
//! the ways out, and a commit that touches no input of an image keeps its
//! digest and every cached layer. Every apt index here is the test's own
//! (`support::apt::TestApt`): what the machine's index offers today plays
//! no part.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::support::apt::TestApt;
use crate::support::{Fixture, gate, hello, image, report, run, show, stdout};

/// Fills the fixture's .deb cache through the machine's apt (`lock
/// --check` fetches and verifies every locked .deb) and returns the lock.
fn locked_debs(f: &Fixture) -> String {
    f.ok(&["lock", "--check"]);
    f.read("lockfiles/debian.lock")
}

/// `xtask ARGS` in `f` with its apt pointed at `apt`.
fn with_apt(f: &Fixture, apt: &TestApt, args: &[&str]) -> std::process::Output {
    run(apt.env(&mut f.command(args)))
}

fn digests(build: &Value) -> Vec<(String, String)> {
    build["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["manifest_digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Acceptance 1: on an apt index that offers a newer (security) version
/// of a locked package, a fresh clone's release is accepted with the same
/// digest as on the lock's own index; `lock --check` passes, `lock
/// --outdated` names the moved package and its security suite.
#[test]
fn a_newer_index_changes_no_verdict_and_no_digest() {
    let f = Fixture::copy_of_repo("newer-index");
    let lock = locked_debs(&f);
    let debs = f.path("target/lane-cache/debs");
    let own = TestApt::new(&lock, &debs, &[], &[]);
    let newer = TestApt::new(&lock, &debs, &[("libc6", "2.36-9+deb12u999")], &[]);

    // The lock's own index: nothing is outdated.
    let out = with_apt(&f, &own, &["lock", "--outdated", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let outdated: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(outdated["debian"], serde_json::json!([]), "{outdated}");

    // The newer index: still satisfied, and the move is reported.
    let out = with_apt(&f, &newer, &["lock", "--check"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = with_apt(&f, &newer, &["lock", "--outdated", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let outdated: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let moved = outdated["debian"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{outdated}");
    assert_eq!(moved[0]["name"], "libc6");
    assert_eq!(moved[0]["available"], "2.36-9+deb12u999");
    assert_eq!(moved[0]["suite"], "bookworm-security");
    assert_eq!(moved[0]["security"], true);
    let out = with_apt(&f, &newer, &["lock", "--outdated"]);
    assert!(
        stdout(&out).contains("libc6") && stdout(&out).contains("security update"),
        "{}",
        show(&out)
    );

    // A release on each index, each from a fresh clone with empty caches
    // (every .deb is fetched through that index): accepted, same digest.
    let mut released = Vec::new();
    for apt in [&own, &newer] {
        let clone = Fixture::clone_of(&f, "newer-index-clone");
        let out = with_apt(&clone, apt, &["release", "--json", "hello"]);
        let r = report(&out);
        let h = hello(&r);
        assert_eq!(
            h["accepted"],
            true,
            "{}\n{}",
            show(&out),
            serde_json::to_string_pretty(h).unwrap()
        );
        assert_eq!(gate(h, "pinned-inputs")["state"], "passed");
        released.push(h["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(released[0], released[1], "the digest moved with the index");
}

/// Acceptance 5: a pinned .deb that the mirror lacks stops the build with
/// an error naming the package, its version and sha256, and the ways out;
/// no layout, no half-written cache file, nothing in the store.
#[test]
fn a_pinned_deb_the_mirror_lacks_is_named_and_nothing_is_written() {
    let f = Fixture::copy_of_repo("lacking-deb");
    let lock = locked_debs(&f);
    let apt = TestApt::new(&lock, &f.path("target/lane-cache/debs"), &[], &["tzdata"]);
    let tzdata = lock
        .split("[[package]]")
        .find(|b| b.contains("name = \"tzdata\""))
        .unwrap();
    let field = |k: &str| {
        tzdata
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
            .unwrap()
            .trim_end_matches('"')
            .to_string()
    };
    let clone = Fixture::clone_of(&f, "lacking-deb-clone");
    for args in [&["build", "base-cc"][..], &["release", "hello"][..]] {
        let out = with_apt(&clone, &apt, args);
        assert!(!out.status.success(), "{args:?}: {}", show(&out));
        let said = show(&out);
        for needle in [
            "do not serve",
            "tzdata",
            &field("version"),
            &field("sha256"),
            "cargo xtask lock",
            "snapshot",
        ] {
            assert!(said.contains(needle), "{args:?}: no {needle:?} in {said}");
        }
    }
    assert!(!clone.path("target/images/base-cc").exists());
    assert!(!clone.path("target/images/hello").exists());
    let hex = field("sha256").trim_start_matches("sha256:").to_string();
    assert!(
        !clone
            .path(&format!("target/lane-cache/debs/{hex}.deb"))
            .exists()
    );
    assert_no_temporaries(&clone.path("target"));
    // Nothing was published or tagged in the local store.
    let store = clone.path("target/local-registry");
    if store.exists() {
        let blobs = walk_files(&store);
        assert!(
            blobs
                .iter()
                .all(|p| !p.contains("/blobs/") && !p.ends_with("index.json")
                    || p.ends_with(".lock")),
            "the store holds {blobs:?}"
        );
    }
}

fn walk_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn assert_no_temporaries(dir: &Path) {
    let left: Vec<String> = walk_files(dir)
        .into_iter()
        .filter(|p| p.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

/// Acceptance 2 (the digest part) and 3: a commit that changes only
/// README.md keeps every image's digest and misses no layer (nothing is
/// compressed); a change of an image's definition, of a file it ships, and
/// of the lock misses the cache and changes the digest. A policy that sets
/// `[identity] stamp = "revision"` puts the commit back into the manifest.
#[test]
fn a_commit_that_touches_no_input_keeps_every_digest_and_every_cached_layer() {
    let f = Fixture::copy_of_repo("readme-commit");
    let first = f.build_json(&[]);
    f.edit(
        "README.md",
        "# release-lane",
        "# release-lane\n\nOne more line.",
    );
    f.commit("README only");
    let second = f.build_json(&[]);
    assert_eq!(digests(&first), digests(&second));
    for i in second["images"].as_array().unwrap() {
        assert_eq!(i["cache"]["misses"], 0, "{}: {}", i["name"], i["cache"]);
        assert_eq!(i["cache"]["bytes_compressed"], 0, "{}", i["name"]);
    }
    let manifest = |f: &Fixture, name: &str, build: &Value| -> Value {
        let d = image(build, name)["manifest_digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        serde_json::from_str(&f.read(&format!("target/images/{name}/blobs/sha256/{d}"))).unwrap()
    };
    let m = manifest(&f, "hello", &second);
    assert!(
        m["annotations"]
            .get("org.opencontainers.image.revision")
            .is_none(),
        "{m}"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "1970-01-01T00:00:00Z"
    );

    // Each input: image.toml, a file it ships, the lock.
    let hello = |b: &Value| image(b, "hello")["manifest_digest"].clone();
    let base = |b: &Value| image(b, "base-cc")["manifest_digest"].clone();
    f.edit(
        "images/hello/image.toml",
        "env = { HELLO_ENV = \"production\" }",
        "env = { HELLO_ENV = \"production\", EXAMPLE_INPUT = \"changed\" }",
    );
    f.commit("image.toml");
    let changed = f.build_json(&["hello"]);
    assert_ne!(hello(&changed), hello(&second), "image.toml is an input");
    let rootfs = walk_files(&f.path("images/hello/rootfs"));
    let shipped = rootfs.first().expect("hello ships files");
    fs::write(
        shipped,
        format!("{}\nchanged\n", fs::read_to_string(shipped).unwrap()),
    )
    .unwrap();
    f.commit("a shipped file");
    let file_changed = f.build_json(&["hello"]);
    assert_ne!(
        hello(&file_changed),
        hello(&changed),
        "a shipped file is an input"
    );
    let misses: u64 = image(&file_changed, "hello")["cache"]["misses"]
        .as_u64()
        .unwrap();
    assert!(misses >= 1, "{}", image(&file_changed, "hello")["cache"]);

    // The lock: base-cc without netbase (its table and its lock entry, as
    // `lock` would write them; base-python keeps it, so its entry stays).
    let text = f.read("images/base-cc/image.toml");
    let edited: String = text
        .lines()
        .filter(|l| !l.contains("\"netbase\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, edited, "base-cc lists netbase");
    f.write("images/base-cc/image.toml", &edited);
    f.edit(
        "lockfiles/debian.lock",
        "\"tzdata\", \"netbase\"]",
        "\"tzdata\"]",
    );
    f.ok(&["lock", "--check"]);
    f.commit("lock");
    let relocked = f.build_json(&["base-cc"]);
    assert_ne!(base(&relocked), base(&second), "the lock is an input");
    // The base: hello on the relocked base-cc is another image.
    let on_new_base = f.build_json(&["hello"]);
    assert_ne!(
        hello(&on_new_base),
        hello(&file_changed),
        "the base is an input"
    );
    // The binary cargo builds (from the sources, Cargo.lock and the
    // toolchain): a changed source misses the binary's layer.
    f.edit(
        "images/hello/src/main.rs",
        "println!(\"hello {}\", env!(\"CARGO_PKG_VERSION\"));",
        "println!(\"hello, {}\", env!(\"CARGO_PKG_VERSION\"));",
    );
    f.commit("the binary's source");
    let rebuilt = f.build_json(&["hello"]);
    assert_ne!(
        hello(&rebuilt),
        hello(&on_new_base),
        "the binary is an input"
    );
    let misses = image(&rebuilt, "hello")["cache"]["misses"]
        .as_u64()
        .unwrap();
    assert!(misses >= 1, "{}", image(&rebuilt, "hello")["cache"]);

    // Stamping the revision is the policy's choice, and then every commit
    // changes the digest.
    f.edit(
        "ci/release-policy.toml",
        "version = 1\n",
        "version = 1\n\n[identity]\nstamp = \"revision\"\n",
    );
    f.commit("stamp the revision");
    let stamped = f.build_json(&["base-cc"]);
    let m = manifest(&f, "base-cc", &stamped);
    let head = crate::support::git(&f.root, &["rev-parse", "HEAD"]);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.revision"],
        head.trim()
    );
    f.commit("another commit");
    let again = f.build_json(&["base-cc"]);
    assert_ne!(base(&again), base(&stamped));
}

/// Acceptance 1, the opt-in gate: a policy that sets
/// `security_update_max_age_days` rejects a release when a security update
/// of a package locked into the image has been offered (built, the date
/// of its .deb) for longer than that; the same policy accepts on the
/// lock's own index, and a limit the update is within accepts too. Nothing
/// is tagged on the rejection. (The test index's update was built on
/// 2024-01-01: more than 7 days and less than 100000 days before any day
/// this test runs.)
#[test]
fn the_opt_in_security_age_gate_rejects_an_update_offered_for_too_long() {
    let f = Fixture::copy_of_repo("security-age");
    let lock = locked_debs(&f);
    let debs = f.path("target/lane-cache/debs");
    let own = TestApt::new(&lock, &debs, &[], &[]);
    let newer = TestApt::new(&lock, &debs, &[("libc6", "2.36-9+deb12u999")], &[]);
    let limit = |days: u32| {
        let policy = f.read("ci/release-policy.toml");
        let edited: String = policy
            .lines()
            .filter(|l| !l.starts_with("security_update_max_age_days"))
            .map(|l| {
                if l == "require = []" {
                    format!("require = []\nsecurity_update_max_age_days = {days}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        f.write("ci/release-policy.toml", &edited);
        f.commit(&format!("security updates within {days} days"));
    };
    let release = |apt: &TestApt| {
        let out = with_apt(&f, apt, &["release", "--json", "hello"]);
        let r = report(&out);
        (out, hello(&r).clone())
    };

    limit(7);
    let (out, h) = release(&own);
    assert!(out.status.success(), "{}", show(&out));
    let g = gate(&h, "security-updates");
    assert_eq!(g["state"], "passed", "{g}");
    assert!(
        h["decision"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "security-updates")
    );

    let (out, h) = release(&newer);
    assert!(!out.status.success(), "{}", show(&out));
    assert_eq!(h["accepted"], false);
    assert!(h["tagged"].as_array().unwrap().is_empty());
    let g = gate(&h, "security-updates");
    assert_eq!(g["state"], "failed", "{g}");
    let summary = g["summary"].as_str().unwrap();
    assert!(
        summary.contains("libc6")
            && summary.contains("2.36-9+deb12u999")
            && summary.contains("bookworm-security")
            && summary.contains("days ago"),
        "{summary}"
    );
    assert_eq!(
        g["evidence"]["updates"][0]["built_at"]["Ok"],
        crate::support::apt::NEWER_BUILT
    );

    limit(100_000);
    let (out, h) = release(&newer);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(gate(&h, "security-updates")["state"], "passed");
}

/// A PEP 503 index of the test's own (`python3 -m http.server` on
/// 127.0.0.1): `pages` maps a project to its links (file name, whether
/// yanked); files are served from the same folder.
struct TestPyIndex {
    _dir: crate::support::TempDir,
    server: std::process::Child,
    url: String,
}

impl TestPyIndex {
    fn new(pages: &[(&str, &[(&str, bool)])], files: &[(&str, Vec<u8>)]) -> TestPyIndex {
        use std::io::BufRead;
        let dir = crate::support::TempDir::new("py-index");
        for (name, bytes) in files {
            fs::create_dir_all(dir.path().join("files")).unwrap();
            fs::write(dir.path().join("files").join(name), bytes).unwrap();
        }
        for (project, links) in pages {
            let mut html = String::from("<!DOCTYPE html><html><body>\n");
            for (file, yanked) in links.iter() {
                html.push_str(&format!(
                    "<a href=\"../../files/{file}\"{}>{file}</a><br/>\n",
                    if *yanked { " data-yanked=\"\"" } else { "" }
                ));
            }
            html.push_str("</body></html>\n");
            let page = dir.path().join("simple").join(project);
            fs::create_dir_all(&page).unwrap();
            fs::write(page.join("index.html"), html).unwrap();
        }
        let mut server = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split("port ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no port in {line:?}"))
            .to_string();
        TestPyIndex {
            _dir: dir,
            server,
            url: format!("http://127.0.0.1:{port}/simple/"),
        }
    }

    /// `cmd` with pip pointed at this index only (no configuration file,
    /// no find-links).
    fn env<'a>(&self, cmd: &'a mut std::process::Command) -> &'a mut std::process::Command {
        cmd.env("PIP_INDEX_URL", &self.url)
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env_remove("PIP_FIND_LINKS")
            .env_remove("PIP_EXTRA_INDEX_URL")
    }
}

impl Drop for TestPyIndex {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Issue 25, points 2 and 3 for wheels, on the test's own index: `lock
/// --outdated` names a locked wheel with a newer version and marks a
/// yanked locked version, and one the index no longer lists at all; a
/// fresh clone whose locked wheel the index no longer serves fails the
/// build naming the file, its version and sha256 and the ways out, with
/// nothing written.
#[test]
fn python_lock_outdated_marks_newer_yanked_and_withdrawn_wheels_and_a_lost_wheel_is_named() {
    let f = Fixture::copy_of_repo("py-outdated");
    // The locked wheels, fetched by hash through the machine's pip.
    f.ok(&["build", "pyhello"]);
    let lock: toml::Table = f.read("lockfiles/python.lock").parse().unwrap();
    let wheels = lock["wheel"].as_array().unwrap();
    let field = |name: &str, k: &str| -> String {
        wheels
            .iter()
            .find(|w| w["name"].as_str() == Some(name))
            .unwrap()[k]
            .as_str()
            .unwrap()
            .to_string()
    };
    let bytes = |name: &str| {
        fs::read(f.path(&format!(
            "target/lane-cache/wheels/{}.whl",
            field(name, "sha256").trim_start_matches("sha256:")
        )))
        .unwrap()
    };
    let (six, dateutil) = (
        field("six", "filename"),
        field("python-dateutil", "filename"),
    );
    let six_newer = "six-1.99.0-py2.py3-none-any.whl";
    let dateutil_newer = "python_dateutil-2.99.0-py2.py3-none-any.whl";
    // six: the locked file still served but yanked, a newer one offered;
    // python-dateutil: the locked file gone, a newer one offered.
    let index = TestPyIndex::new(
        &[
            ("six", &[(six.as_str(), true), (six_newer, false)]),
            ("python-dateutil", &[(dateutil_newer, false)]),
        ],
        &[
            (six.as_str(), bytes("six")),
            (six_newer, b"not read".to_vec()),
            (dateutil_newer, b"not read".to_vec()),
        ],
    );
    let out = run(index.env(&mut f.command(&["lock", "--outdated", "--json"])));
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let python = report["python"].as_array().unwrap();
    let entry = |name: &str| {
        python
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    let s = entry("six");
    assert_eq!(s["locked"], field("six", "version").as_str());
    assert_eq!(s["available"], "1.99.0");
    assert_eq!(
        (s["withdrawn"].clone(), s["yanked"].clone()),
        (true.into(), true.into()),
        "{s}"
    );
    let d = entry("python-dateutil");
    assert_eq!(d["available"], "2.99.0");
    assert_eq!(
        (d["withdrawn"].clone(), d["yanked"].clone()),
        (true.into(), false.into()),
        "{d}"
    );
    let out = run(index.env(&mut f.command(&["lock", "--outdated"])));
    let text = stdout(&out);
    assert!(text.contains("the locked version is yanked"), "{text}");
    assert!(
        text.contains("no longer lists the locked version"),
        "{text}"
    );

    // A fresh clone: the locked python-dateutil wheel is served nowhere.
    let clone = Fixture::clone_of(&f, "py-outdated-clone");
    let out = run(index.env(&mut clone.command(&["build", "pyhello"])));
    assert!(!out.status.success(), "{}", show(&out));
    let said = show(&out);
    for needle in [
        dateutil.as_str(),
        &field("python-dateutil", "version"),
        field("python-dateutil", "sha256").trim_start_matches("sha256:"),
        "cargo xtask lock",
        "PIP_INDEX_URL",
    ] {
        assert!(said.contains(needle), "no {needle:?} in {said}");
    }
    assert!(!clone.path("target/images/pyhello").exists());
}
