//! Faults the lane must survive (issue 17): a release killed at any step,
//! and concurrent releases moving one tag, in the local store and against
//! the real Distribution registry. docs/faults.md is the matrix.
//!
//! The workspace is files-only with one static program (the host's
//! `ldconfig`), so every gate runs for real and a release takes seconds.
//! Faults are injected with the lane's environment hooks
//! (`xtask::adapters::fault`): `LANE_FAULT_KILL_AT` makes the process
//! SIGKILL itself at a named point; `LANE_FAULT_WAIT_AT` holds it at a
//! point until the test lets both runs go at once.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xtask::adapters::fault;

use crate::support::registry::{Creds, Registry};
use crate::support::{Fixture, TempDir, report, show, signed_files_workspace};

const REPO: &str = "test/files";

/// verify's files-only image with two release tags, so a run can be
/// killed between them.
fn image() -> String {
    let image = crate::verify::IMAGE.replace("tags = [\"v1\"]", "tags = [\"v1\", \"stable\"]");
    assert_ne!(image, crate::verify::IMAGE, "the image has a second tag");
    image
}

/// `release --json` with the signing key, to the registry at `host`.
fn registry_release<'a>(key: &'a str, host: &'a str) -> [&'a str; 6] {
    [
        "release",
        "--json",
        "--signing-key",
        key,
        "--registry",
        host,
    ]
}

/// A new commit whose image has a new layer (and so a new digest): every
/// build and publish point is reached again.
fn new_commit(f: &Fixture, what: &str) {
    f.write("images/files/data/one.txt", &format!("{what}\n"));
    f.commit(what);
}

/// Every `.NAME.tmp-PID-N` temporary left anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                out.push(p.display().to_string());
            } else if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            }
        }
    }
    out
}

/// The local store is whole: every repository's index.json parses, every
/// blob hashes to its name, every index entry's blob is there. Returns the
/// tags of `REPO` (name -> digest).
fn local_store_is_whole(f: &Fixture) -> Vec<(String, String)> {
    let root = f.path("target/local-registry");
    let mut tags = Vec::new();
    let repo = root.join(REPO);
    if !repo.exists() {
        return tags;
    }
    for e in fs::read_dir(repo.join("blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let sum = crate::support::sha256_hex_of_file(&e.path());
        assert_eq!(sum, format!("sha256:{name}"), "blob {name} is damaged");
    }
    let Ok(bytes) = fs::read(repo.join("index.json")) else {
        return tags;
    };
    let index: Value = serde_json::from_slice(&bytes).expect("index.json parses");
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        assert!(
            repo.join("blobs/sha256").join(&d[7..]).is_file(),
            "index.json names {d}, which is not stored"
        );
        if let Some(t) = m["annotations"]["org.opencontainers.image.ref.name"].as_str()
            && !t.starts_with("sha256-")
        {
            tags.push((t.to_string(), d.to_string()));
        }
    }
    tags
}

/// The run ended by its own SIGKILL at `point` (so the point was reached).
fn killed_at(out: &Output, point: &str) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the run must reach {point} and be killed there: {}",
        show(out)
    );
}

/// Acceptance 2, local store: a release killed at each point leaves no tag
/// on a digest without accepted, signed evidence, nothing corrupt, no
/// temporary behind after the next run, and the next run succeeds.
#[test]
fn a_release_killed_at_any_point_leaves_the_local_store_whole_and_a_rerun_succeeds() {
    let (f, _keys, key) = signed_files_workspace("crash-local", &image());
    assert!(fault::POINTS.len() >= 6);
    let mut released = Vec::new();
    for point in fault::POINTS {
        new_commit(&f, point);
        let out = crate::support::run(
            f.command(&["release", "--json", "--signing-key", &key])
                .env("LANE_FAULT_KILL_AT", point),
        );
        killed_at(&out, point);
        // Every tag names a digest whose signed evidence says accepted.
        for (tag, digest) in local_store_is_whole(&f) {
            let out = f.xtask(&[
                "verify",
                &format!("{REPO}@{digest}"),
                "--allow-local-builder",
            ]);
            assert!(
                out.status.success(),
                "after a kill at {point}, tag {tag} names {digest}, which does not verify: {}",
                show(&out)
            );
        }
        // The same commit again, no fault: it completes.
        let (out, r) = f.release(None, &["--signing-key", &key]);
        assert!(
            out.status.success(),
            "the re-run after a kill at {point} must succeed: {}",
            show(&out)
        );
        let d = r["images"][0]["digest"].as_str().unwrap().to_string();
        let tags = local_store_is_whole(&f);
        for t in ["v1", "stable"] {
            assert!(
                tags.contains(&(t.to_string(), d.clone())),
                "{t} names the re-run's digest: {tags:?}"
            );
        }
        assert_eq!(r["tags_held"], true);
        let left = temporaries(&f.path("target"));
        assert!(
            left.is_empty(),
            "after the re-run, temporaries of the killed run are gone: {left:?}"
        );
        released.push(d);
    }
    released.dedup();
    assert_eq!(
        released.len(),
        fault::POINTS.len(),
        "each point ran on a new candidate"
    );
}

/// Acceptance 2, registry: the same against the real registry, with a
/// verified CI identity; the tags are read from the registry itself.
#[test]
fn a_registry_release_killed_at_any_point_moves_no_tag_to_unverified_evidence() {
    let reg = Registry::start();
    let host = reg.host();
    let (f, _keys, key) = signed_files_workspace("crash-registry", &image());
    let ci = Creds::none().ci(&f);
    for point in fault::POINTS {
        new_commit(&f, point);
        let args = registry_release(&key, &host);
        let out = crate::support::run(ci.command(&f, &args).env("LANE_FAULT_KILL_AT", point));
        killed_at(&out, point);
        for tag in ["v1", "stable"] {
            if let Some(d) = reg.tag_digest(REPO, tag) {
                let out = ci.xtask(&f, &["verify", &format!("{host}/{REPO}@{d}")]);
                assert!(
                    out.status.success(),
                    "after a kill at {point}, {tag} names {d}, which does not verify: {}",
                    show(&out)
                );
            }
        }
        let out = ci.xtask(&f, &args);
        assert!(
            out.status.success(),
            "the re-run after a kill at {point} must succeed: {}",
            show(&out)
        );
        let d = report(&out)["images"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        for tag in ["v1", "stable"] {
            assert_eq!(reg.tag_digest(REPO, tag).as_deref(), Some(d.as_str()));
        }
    }
}

/// Starts `cmd` with its output captured.
fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask")
}

/// Lets the runs held at `gate` go once all of `children` wait there (or
/// one of them ended before it: its output then tells why).
fn open_gate(gate: &Path, children: &mut [Child]) {
    let n = children.len();
    let deadline = Instant::now() + Duration::from_secs(300);
    let dir = gate.parent().unwrap();
    let prefix = format!("{}.", gate.file_name().unwrap().to_string_lossy());
    loop {
        let waiting = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(".waiting")
            })
            .count();
        if waiting >= n
            || children
                .iter_mut()
                .any(|c| !matches!(c.try_wait(), Ok(None)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the runs never reached the gate");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(gate, b"go").unwrap();
}

/// One run's account of `tag`: (digest, confirmed_at, checked_at, held).
fn tag_account(r: &Value, tag: &str) -> (String, String, String, bool) {
    let i = &r["images"][0];
    let c = i["tag_checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["tag"] == tag)
        .unwrap_or_else(|| panic!("the run moved {tag}: {r}"));
    (
        i["digest"].as_str().unwrap().to_string(),
        c["confirmed_at"].as_str().unwrap().to_string(),
        c["checked_at"].as_str().unwrap().to_string(),
        c["held"].as_bool().unwrap(),
    )
}

/// Acceptance 1, registry: two releases of different commits (two
/// checkouts, two "runners") move `v1` and `stable` in the same registry at
/// the same moment, 20 times. For each tag: it ends on one of the two
/// accepted digests; the run whose digest it names says its move held; the
/// other says it was overtaken, or its final check came before the winner's
/// move was confirmed. A run succeeds exactly when every tag it moved held
/// and says why not otherwise; each record on disk says what its run
/// reported.
#[test]
fn concurrent_registry_releases_to_one_tag_end_consistent_twenty_times() {
    let reg = Registry::start();
    let host = reg.host();
    let (a, _keys, key) = signed_files_workspace("race-a", &image());
    let ci_a = Creds::none().ci(&a);
    // The second runner: a clone of the same repository, one commit ahead.
    let b = Fixture::clone_of(&a, "race-b");
    new_commit(&b, "runner b");
    let ci_b = Creds::none().ci(&b);
    let gates = TempDir::new("race-gates");
    let mut overtaken = 0;
    for round in 0..20 {
        let gate = gates.path().join(format!("go-{round}"));
        let wait = format!("{}:{}", fault::RELEASE_GATES_RUN, gate.display());
        let args = registry_release(&key, &host);
        let mut ca = ci_a.command(&a, &args);
        ca.env("LANE_FAULT_WAIT_AT", &wait);
        let mut cb = ci_b.command(&b, &args);
        cb.env("LANE_FAULT_WAIT_AT", &wait);
        let mut runs = [spawn(ca), spawn(cb)];
        open_gate(&gate, &mut runs);
        let [pa, pb] = runs;
        let outs = [
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        ];
        let reports = [report(&outs[0]), report(&outs[1])];
        for (o, r) in outs.iter().zip(&reports) {
            assert_eq!(r["accepted"], true, "round {round}: {}", show(o));
        }
        let mut held_all = [true, true];
        for tag in ["v1", "stable"] {
            let acc = [tag_account(&reports[0], tag), tag_account(&reports[1], tag)];
            assert_ne!(acc[0].0, acc[1].0, "two commits, two digests");
            let last = reg
                .tag_digest(REPO, tag)
                .expect("the tag is in the registry");
            let w = acc.iter().position(|a| a.0 == last).unwrap_or_else(|| {
                panic!("round {round}: {tag} names {last}, neither accepted digest")
            });
            let (win, lose) = (&acc[w], &acc[1 - w]);
            assert!(win.3, "round {round}: the run {tag} names says it held");
            if lose.3 {
                // Its final check saw its own digest: the winner's move took
                // effect later, so it cannot have been confirmed before.
                assert!(
                    lose.2 <= win.1,
                    "round {round}: a run says {tag} held at {} but the other's move was confirmed at {}",
                    lose.2,
                    win.1
                );
            } else {
                overtaken += 1;
                held_all[1 - w] = false;
                let failures = reports[1 - w]["images"][0]["decision"]["failures"].to_string();
                assert!(
                    failures.contains(&format!("{tag} was moved by another run")),
                    "{failures}"
                );
            }
        }
        for ((o, r), held) in outs.iter().zip(&reports).zip(held_all) {
            assert_eq!(r["tags_held"], held, "round {round}");
            assert_eq!(o.status.success(), held, "round {round}: {}", show(o));
            // The record on disk says what the run reported.
            let i = &r["images"][0];
            let record: Value =
                serde_json::from_slice(&fs::read(i["record"].as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(record["release"]["tag_checks"], i["tag_checks"]);
        }
    }
    eprintln!("20 rounds, {overtaken} tag moves overtaken");
}

/// Acceptance 1, local store: two releases in one checkout at once (two
/// images of one repository, so both rewrite the same index.json and each
/// its referrers) never lose an entry or corrupt the store, 5 times.
#[test]
fn concurrent_local_store_releases_never_corrupt_the_store() {
    let second = image()
        .replace("name = \"files\"", "name = \"other\"")
        .replace("tags = [\"v1\", \"stable\"]", "tags = [\"v2\"]");
    let (f, _keys, key) = signed_files_workspace("race-local", &image());
    f.write("images/other/image.toml", &second);
    f.write("images/other/data/one.txt", "other\n");
    fs::copy("/sbin/ldconfig", f.path("images/other/data/ldconfig")).unwrap();
    f.commit("a second image in the same repository");
    let gates = TempDir::new("race-local-gates");
    for round in 0..5 {
        new_commit(&f, &format!("round {round}"));
        let gate = gates.path().join(format!("go-{round}"));
        let wait = format!("{}:{}", fault::RELEASE_GATES_RUN, gate.display());
        let mut children: Vec<Child> = ["files", "other"]
            .into_iter()
            .map(|image| {
                let mut c = f.command(&["release", image, "--json", "--signing-key", &key]);
                c.env("LANE_FAULT_WAIT_AT", &wait);
                spawn(c)
            })
            .collect();
        open_gate(&gate, &mut children);
        let mut digests = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", show(&out));
            digests.push(
                report(&out)["images"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let tags = local_store_is_whole(&f);
        assert!(
            tags.contains(&("v1".into(), digests[0].clone())),
            "{tags:?}"
        );
        assert!(
            tags.contains(&("v2".into(), digests[1].clone())),
            "{tags:?}"
        );
        for d in &digests {
            let out = f.xtask(&["verify", &format!("{REPO}@{d}"), "--allow-local-builder"]);
            assert!(out.status.success(), "round {round}: {}", show(&out));
        }
    }
}

/// A listener on 127.0.0.1 that records the head of every request it gets
/// and answers 404: "another host" a registry may redirect to.
struct Thief {
    port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Thief {
    fn start() -> Thief {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    head.push_str(&line);
                    line.clear();
                }
                log.lock().unwrap().push(head);
                let mut c = conn;
                let _ = c.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Thief { port, heads }
    }
}

/// Acceptance 4: a registry (behind the fault proxy, with htpasswd auth)
/// that trickles a manifest, sends an oversized one, redirects forever or
/// redirects to another host ends `publish` with a clear error well within
/// the configured timeout, and the other host never sees a credential.
#[test]
fn a_slow_huge_or_redirecting_registry_ends_the_run_with_a_clear_error() {
    use crate::support::registry::{Fault, FaultProxy};
    let reg = Registry::start_with_auth("ci", "s3cret-pass");
    let thief = Thief::start();
    let cases = [
        (
            Fault::TrickleManifest,
            "no complete answer within 5 s (LANE_REGISTRY_TIMEOUT)",
        ),
        (
            Fault::HugeManifest,
            "is more than 4194304 bytes, more than the lane reads",
        ),
        (Fault::RedirectLoop, "more than 5 redirects"),
        (Fault::RedirectTo(thief.port), "redirected"),
    ];
    for (fault, want) in cases {
        let proxy = FaultProxy::start(reg.port, fault);
        let (f, _keys, _key) = signed_files_workspace("net-faults", &image());
        let started = Instant::now();
        let out = crate::support::run(
            Creds::env("ci", "s3cret-pass")
                .command(&f, &["publish", "--registry", &proxy.host()])
                .env("LANE_REGISTRY_TIMEOUT", "5"),
        );
        let took = started.elapsed();
        assert!(!out.status.success(), "{fault:?}: {}", show(&out));
        assert!(proxy.hits() > 0, "{fault:?} was applied");
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{fault:?} ({took:?}): {}", err.trim().replace('\n', " | "));
        assert!(err.contains(want), "{fault:?}: wanted {want:?} in:\n{err}");
        assert!(
            took < Duration::from_secs(30),
            "{fault:?}: the run took {took:?}, more than the 5 s timeout allows"
        );
        assert!(
            reg.tag_digest(REPO, "v1").is_none(),
            "{fault:?}: no tag moves"
        );
    }
    // The other host got nothing: no request, so no credential.
    let heads = thief.heads.lock().unwrap();
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("authorization")),
        "a credential reached the other host: {heads:?}"
    );
    assert!(
        heads.is_empty(),
        "the manifest redirect was not followed: {heads:?}"
    );
}

/// SIGTERM and SIGINT outside the smoke gate: the run stops at once with
/// 128 + the signal and removes what it was writing (checked before any
/// other run could sweep it); the next run succeeds. (During smoke the
/// engine's handler removes the containers: smoke::interrupted_run_...)
#[test]
fn sigterm_and_sigint_stop_the_run_and_remove_its_temporaries() {
    let (f, _keys, key) = signed_files_workspace("signals", &image());
    let gates = TempDir::new("signal-gates");
    for (point, sig) in [
        (fault::BUILD_LAYOUT_SWAPPING, libc::SIGTERM),
        (fault::PUBLISH_BLOB_STORED, libc::SIGINT),
    ] {
        new_commit(&f, point);
        let gate = gates.path().join(point.replace(':', "-"));
        let mut run = f.command(&["release", "--json", "--signing-key", &key]);
        run.env("LANE_FAULT_WAIT_AT", format!("{point}:{}", gate.display()));
        let mut child = [spawn(run)];
        // Wait until the run is held at the point, then signal it there.
        let deadline = Instant::now() + Duration::from_secs(120);
        let waiting = format!("{}.{}.waiting", gate.display(), child[0].id());
        while !Path::new(&waiting).exists() {
            assert!(Instant::now() < deadline, "the run never reached {point}");
            assert!(
                matches!(child[0].try_wait(), Ok(None)),
                "the run ended before {point}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = temporaries(&f.path("target"));
        // SAFETY: kill(2) of our own child process.
        unsafe { libc::kill(child[0].id() as i32, sig) };
        let [c] = child;
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(128 + sig),
            "{point}: {}",
            show(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("interrupted ("),
            "{}",
            show(&out)
        );
        let left = temporaries(&f.path("target"));
        assert!(
            left.is_empty(),
            "{point}: the interrupted run left {left:?} (it had {before:?})"
        );
        local_store_is_whole(&f);
        let (out, r) = f.release(None, &["--signing-key", &key]);
        assert!(out.status.success(), "{point}: {}", show(&out));
        assert_eq!(r["accepted"], true);
    }
}
