//! `cargo xtask smoke` against the real Docker Engine (issue 4).
//!
//! Each test smokes its own variant of the sample image: the `[[smoke]]`
//! entries differ, and a label unique to the test gives each variant its own
//! config digest, so parallel tests never share an engine image.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use xtask::adapters::engine::SmokeOptions;
use xtask::adapters::workspace::Workspace;
use xtask::lane::smoke;

use crate::support::{
    self, DockerImage, Fixture, docker, entry, report, run, run_ok, sha256_hex_of_file, show,
    stderr, stdout,
};

/// A copy of this repository whose `hello` image has the given `[[smoke]]`
/// entries and the label `lane.test.case = CASE` (its own config digest).
fn hello_variant(case: &str, smoke_entries: &str) -> Fixture {
    let f = Fixture::copy_of_repo(case);
    let path = "images/hello/image.toml";
    let text = f.read(path);
    let (head, _) = text
        .split_once("[[smoke]]")
        .expect("images/hello/image.toml has [[smoke]] entries");
    assert!(head.contains("labels = {"), "hello's [config] has labels");
    let head = head.replacen(
        "labels = {",
        &format!("labels = {{ \"lane.test.case\" = \"{case}\","),
        1,
    );
    f.write(path, &format!("{head}{smoke_entries}"));
    f.commit(case);
    f
}

const HELLO: &str = "/usr/local/bin/hello";

/// A `[[smoke]]` entry running `command`, with `extra` lines.
fn smoke_entry(name: &str, command: &[&str], extra: &str) -> String {
    format!("\n[[smoke]]\nname = \"{name}\"\ncommand = {command:?}\n{extra}")
}

/// A smoke entry that runs hello's server, which never exits.
fn hangs(timeout_secs: u64) -> String {
    smoke_entry(
        "hangs",
        &[HELLO, "serve", "127.0.0.1:8080"],
        &format!("timeout_secs = {timeout_secs}\n"),
    )
}

/// `smoke hello --json` that must fail: its report and stderr.
fn smoke_fails(f: &Fixture) -> (serde_json::Value, String) {
    let out = f.xtask(&["smoke", "hello", "--json"]);
    assert!(
        !out.status.success(),
        "the smoke run must fail: {}",
        show(&out)
    );
    (report(&out), stderr(&out))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    entry(&report["checks"], "name", name)
}

/// The trimmed stdout of a docker CLI command that must succeed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", show(&out));
    stdout(&out).trim().to_string()
}

/// Containers (running or not) carrying the label `label`.
fn containers(label: &str) -> String {
    docker_ok(&["ps", "-a", "-q", "--filter", &format!("label={label}")])
}

/// Containers (running or not) carrying the smoke run's label.
fn containers_of_run(run_id: &str) -> String {
    containers(&format!("lane.smoke.run={run_id}"))
}

/// Images carrying this test case's label.
fn images_of_case(case: &str) -> String {
    docker_ok(&[
        "image",
        "ls",
        "-q",
        "--filter",
        &format!("label=lane.test.case={case}"),
    ])
}

fn image_exists(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).status.success()
}

#[test]
fn sample_image_passes_and_the_engine_image_id_is_our_config_digest() {
    let f = Fixture::copy_of_repo("smoke-hello");
    let out = f.xtask(&["smoke", "hello", "--json", "--keep-image"]);
    let report = report(&out);
    // The test's own cleanup of --keep-image.
    let _tag = DockerImage(report["loaded_tag"].as_str().unwrap().to_string());
    assert!(out.status.success(), "smoke failed:\n{}", show(&out));
    assert_eq!(report["passed"], true);
    assert_eq!(report["engine"]["store"], "classic", "{report}");
    assert_eq!(check(&report, "version")["exit_code"], 0);
    assert!(
        check(&report, "version")["output"]
            .as_str()
            .unwrap()
            .starts_with("hello 0.1.0")
    );
    assert!(
        check(&report, "self-check")["output"]
            .as_str()
            .unwrap()
            .contains("self-check ok")
    );

    // Our digests, recomputed with sha256sum from the layout on disk.
    let layout = f.path("target/images/hello");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest_file = layout.join("blobs/sha256").join(&manifest_digest[7..]);
    assert_eq!(sha256_hex_of_file(&manifest_file), manifest_digest);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_file).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config_file = layout.join("blobs/sha256").join(&config_digest[7..]);
    assert_eq!(sha256_hex_of_file(&config_file), config_digest);
    assert_eq!(report["manifest_digest"], manifest_digest);

    // The engine's own answer, asked through the docker CLI, not the lane.
    let tag = report["loaded_tag"].as_str().unwrap();
    let engine_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag]);
    assert_eq!(
        engine_id, config_digest,
        "classic store: image ID = config digest"
    );
    assert_eq!(report["image_id"], engine_id);

    // The isolation the engine applied to each smoke container.
    for c in report["checks"].as_array().unwrap() {
        let iso = &c["isolation"];
        assert_eq!(iso["network_mode"], "none", "{c}");
        assert_eq!(iso["readonly_rootfs"], true, "{c}");
        assert_eq!(iso["cap_drop"], serde_json::json!(["ALL"]), "{c}");
        assert_eq!(
            iso["security_opt"],
            serde_json::json!(["no-new-privileges"]),
            "{c}"
        );
        assert_eq!(iso["memory_bytes"], 256 << 20, "{c}");
        assert_eq!(iso["pids_limit"], 128, "{c}");
        assert_eq!(iso["nano_cpus"], 1_000_000_000i64, "one CPU: {c}");
        assert_eq!(iso["log_max_size"], "1m", "a capped log: {c}");
        assert_eq!(iso["user"], "65532:65532", "{c}");
    }
    assert_eq!(containers_of_run(report["run_id"].as_str().unwrap()), "");

    // Without --keep-image the temporary tag is gone afterwards.
    let out = f.xtask(&["smoke", "hello", "--json"]);
    assert!(out.status.success(), "second smoke failed:\n{}", show(&out));
    let second = support::report(&out);
    assert_eq!(second["image_id"], engine_id);
    let second_tag = second["loaded_tag"].as_str().unwrap();
    assert_ne!(second_tag, tag);
    assert!(!image_exists(second_tag), "{second_tag} was left behind");
    assert!(image_exists(tag), "another run's tag must survive");
}

#[test]
fn non_zero_exit_fails_and_shows_the_container_logs() {
    let f = hello_variant(
        "smoke-exit",
        &[
            smoke_entry("version", &[HELLO, "--version"], ""),
            smoke_entry("bad-flag", &[HELLO, "--frobnicate"], "expect_exit = 0\n"),
        ]
        .concat(),
    );
    let out = f.xtask(&["smoke", "hello"]);
    assert!(!out.status.success(), "a failing smoke command must fail");
    let err = stderr(&out);
    assert!(
        err.contains("smoke check of hello") && err.contains("1 of 2 commands failed"),
        "{err}"
    );
    assert!(err.contains("exited with code 2, expected 0"), "{err}");
    // The container's own stderr, in the error and in the printed result.
    assert!(
        err.contains("| hello: unknown argument \"--frobnicate\""),
        "{err}"
    );
    let stdout = stdout(&out);
    assert!(stdout.contains("bad-flag\tFAILED\texit 2"), "{stdout}");
    assert!(stdout.contains("version\tpassed\texit 0"), "{stdout}");
    assert!(stdout.contains("hello: unknown argument"), "{stdout}");

    let (report, _) = smoke_fails(&f);
    assert_eq!(report["passed"], false);
    let bad = check(&report, "bad-flag");
    assert_eq!(bad["exit_code"], 2);
    assert_eq!(bad["passed"], false);
    assert!(bad["output"].as_str().unwrap().contains("unknown argument"));
    assert_eq!(check(&report, "version")["passed"], true);
}

#[test]
fn missing_or_non_executable_entrypoint_fails_with_the_engine_error() {
    // The image's own entrypoint names a binary that is not in the image.
    let f = hello_variant(
        "smoke-exec",
        &[
            smoke_entry("missing", &["/usr/local/bin/missing", "--version"], ""),
            smoke_entry("not-executable", &["/etc/hello/hello.conf"], ""),
        ]
        .concat(),
    );
    f.edit(
        "images/hello/image.toml",
        "entrypoint = [\"/usr/local/bin/hello\"]\ncmd",
        "entrypoint = [\"/usr/local/bin/missing\"]\ncmd",
    );
    f.commit("missing entrypoint");
    let (report, err) = smoke_fails(&f);
    let missing = check(&report, "missing");
    let failures = missing["failures"].to_string();
    assert!(
        failures.contains("the engine could not start the container")
            && failures.contains("/usr/local/bin/missing")
            && failures.contains("no such file or directory"),
        "{missing}"
    );
    assert_eq!(missing["exit_code"], serde_json::Value::Null);
    let noexec = check(&report, "not-executable");
    let failures = noexec["failures"].to_string();
    assert!(
        failures.contains("/etc/hello/hello.conf") && failures.contains("permission denied"),
        "{noexec}"
    );
    assert!(err.contains("2 of 2 commands failed"), "{err}");
    assert!(err.contains("no such file or directory"), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(containers_of_run(report["run_id"].as_str().unwrap()), "");
}

#[test]
fn hanging_command_is_killed_at_the_timeout_and_no_container_is_left() {
    let f = hello_variant("smoke-hang", &hangs(2));
    let started = std::time::Instant::now();
    let (report, err) = smoke_fails(&f);
    let elapsed = started.elapsed();
    let hangs = check(&report, "hangs");
    assert_eq!(hangs["timed_out"], true, "{hangs}");
    assert_eq!(hangs["passed"], false);
    let ms = hangs["duration_ms"].as_u64().unwrap();
    assert!((2000..15000).contains(&ms), "killed at ~2 s, took {ms} ms");
    assert_eq!(hangs["exit_code"], 137, "SIGKILL: {hangs}");
    assert!(
        hangs["failures"]
            .to_string()
            .contains("the container was killed"),
        "{hangs}"
    );
    assert!(elapsed < Duration::from_secs(300), "{elapsed:?}");
    assert!(err.contains("did not finish within 2 s"), "{err}");
    // Nothing of this run is left in the engine.
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(containers_of_run(run_id), "", "containers left behind");
    assert!(!image_exists(report["loaded_tag"].as_str().unwrap()));
}

/// Docker's default bridge gateway as seen from the host (docker0).
fn bridge_gateway() -> String {
    let text = stdout(&run(
        Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"])
    ));
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no IPv4 address on docker0: {text}"))
}

#[test]
fn smoke_container_has_no_network() {
    // A listener the host offers on every interface: a container on the
    // default bridge reaches it at the bridge gateway.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted_tx, accepted_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.read(&mut [0u8; 16]);
            if accepted_tx.send(()).is_err() {
                break;
            }
        }
    });
    let target = format!("{}:{port}", bridge_gateway());
    let f = hello_variant(
        "smoke-net",
        &smoke_entry(
            "reach-host",
            &[HELLO, "--connect", &target],
            "expect_output = \"connected to\"\ntimeout_secs = 20\n",
        ),
    );

    // Control: the same image and command with a network does connect, so
    // the failure below is the missing network, not the command.
    let ws = Workspace::locate(Some(&f.root)).unwrap();
    let control = SmokeOptions {
        network_mode: "bridge".into(),
        quiet: true,
        ..SmokeOptions::default()
    };
    let report = smoke::smoke(&ws, "hello", &control).unwrap();
    assert!(report.passed, "control run with a network: {report:#?}");
    assert!(report.checks[0].output.contains("connected to"));
    accepted_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the control container connected to the listener");

    // The lane: no network.
    let (report, err) = smoke_fails(&f);
    let c = check(&report, "reach-host");
    assert_eq!(c["isolation"]["network_mode"], "none");
    assert_eq!(c["exit_code"], 1, "{c}");
    assert!(
        c["output"].as_str().unwrap().contains("connect failed"),
        "{c}"
    );
    assert!(
        accepted_rx.try_recv().is_err(),
        "the smoke container reached the host's listener"
    );
    assert!(err.contains("connect failed"), "{err}");
}

/// A files-only workspace with one image that has a smoke command.
fn files_only(label: &str, smoke_entries: &str) -> Fixture {
    Fixture::with_files(
        label,
        &[
            (
                "images/files/image.toml",
                &format!(
                    "name = \"files\"\nrepository = \"test/files\"\n\n[[layer]]\nname = \"one\"\nfiles = [{{ src = \"one.txt\", dest = \"/one.txt\" }}]\n{smoke_entries}"
                ),
            ),
            ("images/files/one.txt", "one\n"),
        ],
    )
}

#[test]
fn unreachable_engine_fails_with_its_address() {
    let f = files_only("smoke-noengine", &smoke_entry("x", &["/one.txt"], ""));
    let socket = format!(
        "unix:///tmp/lane-no-engine-{}-{}.sock",
        std::process::id(),
        line!()
    );
    for json in [false, true] {
        let mut args = vec!["smoke", "files"];
        if json {
            args.push("--json");
        }
        let out = run(f.command(&args).env("DOCKER_HOST", &socket));
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("Docker Engine not reachable at {socket}: ")),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "no report without an engine");
    }
    // Nothing was built: the engine is checked first.
    assert!(!f.path("target/images/files").exists());
}

#[test]
fn image_without_smoke_commands_is_a_failure() {
    let f = files_only("smoke-none", "");
    let err = f.fails(&["smoke", "files"]);
    assert!(
        err.contains("image files declares no smoke command; add a [[smoke]] entry"),
        "{err}"
    );
}

#[test]
fn interrupted_run_removes_its_container_and_tag() {
    let case = "smoke-interrupt";
    let f = hello_variant(case, &hangs(120));
    // Build first, so the smoke run below reaches the engine quickly.
    f.build_json(&["hello"]);
    let child = f
        .command(&["smoke", "hello", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Smoke containers inherit the image's labels, among them this case's.
    let running = || {
        docker_ok(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=lane.test.case={case}"),
        ])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while running().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the smoke container never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: sends SIGINT to the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(containers(&format!("lane.test.case={case}")), "");
    assert_eq!(images_of_case(case), "", "the loaded image must be removed");
}

#[test]
fn load_error_in_the_engine_stream_is_a_failure() {
    let case = "smoke-badlayer";
    let f = hello_variant(case, &smoke_entry("version", &[HELLO, "--version"], ""));
    // The engine skips reading a layer whose diff_id chain it already has
    // (parallel tests load the same hello layers), so give this variant a
    // config layer of its own and corrupt that one.
    let conf = "images/hello/rootfs/etc/hello/hello.conf";
    let text = f.read(conf);
    f.write(conf, &format!("{text}# {case} {}\n", std::process::id()));
    f.commit("own config layer");
    let report = f.build_json(&["hello"]);
    let built = support::image(&report, "hello");
    // A copy of the layout whose config layer blob is another (valid) gzip
    // tar: manifest and config are intact, so only the engine can notice
    // that the layer's diff_id is not the one the config names.
    let copy = support::TempDir::new(case);
    let layout = copy.path().join("hello");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(built["layout"].as_str().unwrap())
            .arg(&layout),
    );
    // The config layer is the image's last (after base-cc's packages and the
    // binary): the one layer no other test loads.
    let last = built["layers"].as_array().unwrap().len() - 1;
    let layer = built["layers"][last]["digest"].as_str().unwrap();
    let blob = layout.join("blobs/sha256").join(&layer[7..]);
    fs::remove_file(&blob).unwrap();
    fs::write(copy.path().join("other.txt"), "not the layer\n").unwrap();
    run_ok(
        Command::new("tar")
            .arg("czf")
            .arg(&blob)
            .arg("-C")
            .arg(copy.path())
            .arg("other.txt"),
    );

    let image = xtask::adapters::layout::Layout::at("hello", &layout)
        .smoke_image(built["manifest_digest"].as_str().unwrap())
        .unwrap();
    let spec = lane_core::spec::SmokeSpec {
        name: "version".into(),
        command: vec![HELLO.into(), "--version".into()],
        expect_exit: 0,
        expect_output: None,
        timeout_secs: 10,
    };
    let opts = SmokeOptions {
        quiet: true,
        ..SmokeOptions::default()
    };
    let err = xtask::adapters::engine::smoke(&image, &[spec], &opts).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("the Docker Engine failed to load hello"),
        "{err}"
    );
    // The engine's own words, from the middle of the load stream.
    let diff_id = built["layers"][last]["diff_id"].as_str().unwrap();
    assert!(
        err.contains(&format!("invalid diffID for layer {last}")) && err.contains(diff_id),
        "{err}"
    );
    assert_eq!(images_of_case(case), "");
}

/// Issue 27, finding 11: an image whose config names no user runs its
/// smoke commands as nobody; `smoke_user = "root"` in image.toml runs them
/// as root, on purpose. A malformed smoke_user is refused with its line.
#[test]
fn smoke_commands_run_as_nobody_unless_image_toml_says_root() {
    let (f, _keys, _key) =
        crate::support::signed_files_workspace("smoke-user", crate::verify::IMAGE);
    let out = f.xtask(&["smoke", "files", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let r = support::report(&out);
    assert_eq!(r["checks"][0]["isolation"]["user"], "65534:65534", "{r}");
    f.write(
        "images/files/image.toml",
        &crate::verify::IMAGE.replace("tags = [\"v1\"]", "tags = [\"v1\"]\nsmoke_user = \"root\""),
    );
    let out = f.xtask(&["smoke", "files", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let r = support::report(&out);
    assert_eq!(r["checks"][0]["isolation"]["user"], "0:0", "{r}");
    f.write(
        "images/files/image.toml",
        &crate::verify::IMAGE.replace("tags = [\"v1\"]", "tags = [\"v1\"]\nsmoke_user = \"admin\""),
    );
    let err = f.fails(&["smoke", "files"]);
    assert!(
        err.contains("smoke_user \"admin\"") && err.contains("image.toml:"),
        "{err}"
    );
}
