//! `cargo xtask publish` end to end against the real Distribution registry
//! (issue 3). Each acceptance point of the issue is one test here.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use base64::Engine as _;
use xtask::adapters::registry_server::free_port;

use crate::support::registry::{Creds, Fault, FaultProxy, Registry, files_under, sha256_of};
use crate::support::{Fixture, column, printed, report, run_ok, show, stderr, stdout};

const IMAGE: &str = r#"
name = "files"
repository = "test/files"
tags = ["v1"]

[[layer]]
name = "data"
files = [{ src = "data/one.txt", dest = "/srv/one.txt" }]

[[layer]]
name = "more"
files = [{ src = "data/two.txt", dest = "/srv/two.txt" }]

[config]
entrypoint = ["/srv/one.txt"]
"#;

/// A files-only image (no cargo build): two layers and a config.
fn files_image(label: &str) -> Fixture {
    Fixture::with_files(
        label,
        &[
            ("images/files/image.toml", IMAGE),
            ("images/files/data/one.txt", "one\n"),
            ("images/files/data/two.txt", "two\n"),
        ],
    )
}

/// The report of a publish that must succeed.
fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "publish failed: {}", show(out));
    report(out)
}

fn publish(creds: &Creds, f: &Fixture, registry: &str) -> Output {
    creds.xtask(f, &["publish", "--registry", registry, "--json"])
}

/// A publish through `proxy` that must fail because of its fault; returns
/// stderr.
fn publish_fails(f: &Fixture, proxy: &FaultProxy) -> String {
    let out = publish(&Creds::none(), f, &proxy.host());
    assert!(!out.status.success(), "{}", show(&out));
    assert!(proxy.hits() > 0, "the fault was never applied");
    let err = stderr(&out);
    eprintln!("publish failed as expected:\n{err}");
    err
}

/// Acceptance 1: skopeo reads the tag and gets bytes that hash to the
/// digest the lane reported; inspecting by that digest works.
#[test]
fn published_tag_hashes_to_the_reported_digest() {
    let reg = Registry::start();
    let f = files_image("pub-skopeo");
    let report = json(&publish(&Creds::none(), &f, &reg.host()));
    let image = &report["images"][0];
    let digest = image["digest"].as_str().unwrap().to_string();
    assert_eq!(image["repository"], "test/files");
    assert_eq!(
        image["reference"],
        format!("{}/test/files@{digest}", reg.host())
    );
    assert_eq!(image["cross_check"]["ok"], true);
    // The digest is the one build wrote into the layout.
    assert_eq!(built_digest(&f), digest);

    let raw = reg.skopeo_raw("test/files:v1").expect("the tag v1 exists");
    assert_eq!(
        sha256_of(&raw),
        digest,
        "skopeo's bytes of the tag hash to the reported digest"
    );
    let by_digest = reg.skopeo_inspect(&format!("test/files@{digest}"));
    assert!(
        by_digest.status.success(),
        "skopeo inspect by digest: {}",
        show(&by_digest)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&by_digest.stdout).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
}

/// Acceptance 2: the second publish of the same image uploads no blob bytes.
#[test]
fn publishing_again_uploads_no_blob_bytes() {
    let reg = Registry::start();
    let f = files_image("pub-again");
    let first = json(&publish(&Creds::none(), &f, &reg.host()));
    let blobs = &first["images"][0]["blobs"];
    assert_eq!(blobs["uploaded"], 3, "two layers and the config: {first}");
    // The counted bytes are the sizes of the layout's blob files.
    let layout = f.path("target/images/files/blobs/sha256");
    let manifest_digest = first["images"][0]["digest"].as_str().unwrap();
    let expected: u64 = fs::read_dir(&layout)
        .unwrap()
        .flatten()
        .filter(|e| !manifest_digest.ends_with(&*e.file_name().to_string_lossy()))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(blobs["bytes_uploaded"], expected);
    let stored = reg.blob_count();

    let second = json(&publish(&Creds::none(), &f, &reg.host()));
    let blobs = &second["images"][0]["blobs"];
    assert_eq!(blobs["bytes_uploaded"], 0, "{second}");
    assert_eq!(blobs["uploaded"], 0);
    assert_eq!(blobs["skipped"], 3);
    assert_eq!(second["images"][0]["digest"], first["images"][0]["digest"]);
    assert_eq!(
        reg.blob_count(),
        stored,
        "no new blob in the registry's storage"
    );
    // The human output says so too.
    let out = Creds::none().xtask(&f, &["publish", "--registry", &reg.host()]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("0 blobs uploaded (0 bytes), 3 skipped"),
        "{text}"
    );
    assert!(!stderr(&out).contains("uploading"), "{}", show(&out));
}

/// Acceptance 3: wrong password, missing credential and unreachable
/// registry fail in the preflight, before the build, naming the boundary;
/// nothing reaches the registry's storage.
#[test]
fn preflight_failures_stop_before_the_build_and_push_nothing() {
    let reg = Registry::start_with_auth("ci", "right-password");
    let host = reg.host();
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    let cases: [(&str, Creds, &str, String); 3] = [
        (
            "wrong password",
            Creds::env("ci", "wrong-password"),
            &host,
            format!("authentication failed for user ci at {host} (check LANE_REGISTRY_PASSWORD"),
        ),
        (
            "missing credential",
            Creds::none(),
            &host,
            format!("registry {host} requires authentication but no credentials were found"),
        ),
        (
            "unreachable",
            Creds::env("ci", "right-password"),
            &dead,
            format!("registry {dead} unreachable"),
        ),
    ];
    for (what, creds, target, expected) in cases {
        let f = files_image("pub-preflight");
        let out = creds.xtask(&f, &["publish", "--registry", target]);
        assert!(
            !out.status.success(),
            "{what}: publish must fail: {}",
            show(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains(&expected),
            "{what}: expected {expected:?} in:\n{}",
            show(&out)
        );
        assert!(
            !err.contains("built "),
            "{what}: the build must not start: {err}"
        );
        assert!(
            !f.path("target/images").exists() && !f.path("target/lane-cache").exists(),
            "{what}: nothing may be built"
        );
        assert_eq!(reg.blob_count(), 0, "{what}: nothing may be pushed");
    }
    // And with the right password the same publish goes through.
    let f = files_image("pub-preflight-ok");
    let out = Creds::env("ci", "right-password").xtask(&f, &["publish", "--registry", &host]);
    assert!(out.status.success(), "{}", show(&out));
    // Distribution stores the manifest as a blob too.
    assert_eq!(reg.blob_count(), 4);
}

/// The fourth boundary of the preflight: authenticated, but the registry
/// refuses to start an upload in the repository.
#[test]
fn preflight_names_a_missing_push_permission() {
    let reg = Registry::start_with_auth("ci", "right-password");
    let proxy = FaultProxy::start(reg.port, Fault::DenyPush);
    let f = files_image("pub-deny");
    let out =
        Creds::env("ci", "right-password").xtask(&f, &["publish", "--registry", &proxy.host()]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("authenticated as ci but not allowed to push to test/files"),
        "{}",
        show(&out)
    );
    assert!(!f.path("target/images").exists(), "nothing may be built");
    assert_eq!(reg.blob_count(), 0);
}

/// Token auth (a Bearer challenge, a token from the realm for the
/// credential) is followed in the preflight and in the push.
#[test]
fn bearer_token_auth_is_followed() {
    use crate::support::registry::{BEARER_PASSWORD, BEARER_USER};
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.port, Fault::BearerAuth);
    let f = files_image("pub-bearer");
    let out = Creds::env(BEARER_USER, "not-the-password")
        .xtask(&f, &["publish", "--registry", &proxy.host()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains(&format!(
            "authentication failed for user ci at {}",
            proxy.host()
        )),
        "{}",
        show(&out)
    );
    assert!(!f.path("target/images").exists());
    let report = json(&publish(
        &Creds::env(BEARER_USER, BEARER_PASSWORD),
        &f,
        &proxy.host(),
    ));
    let digest = report["images"][0]["digest"].as_str().unwrap();
    assert_eq!(report["images"][0]["blobs"]["uploaded"], 3);
    assert_eq!(reg.tag_digest("test/files", "v1").as_deref(), Some(digest));
}

/// Two images with an identical layer in two repositories: the second
/// gets it by a cross-repository mount, not an upload.
#[test]
fn shared_layer_is_mounted_across_repositories() {
    let reg = Registry::start();
    let other = IMAGE
        .replace("name = \"files\"", "name = \"other\"")
        .replace("test/files", "test/other")
        .replace("[[layer]]\nname = \"more\"\nfiles = [{ src = \"data/two.txt\", dest = \"/srv/two.txt\" }]\n", "");
    let f = Fixture::with_files(
        "pub-mount",
        &[
            ("images/files/image.toml", IMAGE),
            ("images/files/data/one.txt", "one\n"),
            ("images/files/data/two.txt", "two\n"),
            ("images/other/image.toml", &other),
            ("images/other/data/one.txt", "one\n"),
        ],
    );
    let report = json(&publish(&Creds::none(), &f, &reg.host()));
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{report}");
    assert_eq!(images[0]["blobs"]["uploaded"], 3, "{report}");
    assert_eq!(
        images[1]["blobs"]["mounted"], 1,
        "the shared layer: {report}"
    );
    assert_eq!(
        images[1]["blobs"]["uploaded"], 1,
        "only the config: {report}"
    );
    let d = images[1]["digest"].as_str().unwrap();
    assert_eq!(reg.tag_digest("test/other", "v1").as_deref(), Some(d));
}

/// A registry that omits Docker-Content-Digest is not trusted on its word:
/// the digest is computed from the fetched bytes, which must match.
#[test]
fn missing_digest_header_is_replaced_by_hashing_the_fetched_bytes() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.port, Fault::StripDigestHeader);
    let f = files_image("pub-noheader");
    let report = json(&publish(&Creds::none(), &f, &proxy.host()));
    assert!(proxy.hits() > 0);
    let image = &report["images"][0];
    let digest = image["digest"].as_str().unwrap();
    let check = &image["cross_check"];
    assert_eq!(
        check["pushed_digest_header"],
        serde_json::Value::Null,
        "{report}"
    );
    assert_eq!(check["fetched_digest_header"], serde_json::Value::Null);
    assert_eq!(check["fetched_sha256"], digest);
    assert_eq!(reg.tag_digest("test/files", "v1").as_deref(), Some(digest));
}

/// Publishes a first good version straight to the registry; returns its digest.
fn good_first_version(reg: &Registry, f: &Fixture) -> String {
    let report = json(&publish(&Creds::none(), f, &reg.host()));
    let d = report["images"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        reg.tag_digest("test/files", "v1").as_deref(),
        Some(d.as_str())
    );
    d
}

/// The manifest digest build wrote into the layout of `files`.
fn built_digest(f: &Fixture) -> String {
    let index: serde_json::Value =
        serde_json::from_str(&f.read("target/images/files/index.json")).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn change_content(f: &Fixture) {
    f.write("images/files/data/two.txt", "two, changed\n");
    f.commit("change");
}

/// A good first version published straight to the registry, then a new
/// version published through a proxy with `fault`, which must fail and
/// leave the tag on the good version. Returns the failure's stderr and the
/// registry's blob count before the failed publish.
fn failed_update(reg: &Registry, label: &str, fault: Fault) -> (String, usize) {
    let f = files_image(label);
    let good = good_first_version(reg, &f);
    change_content(&f);
    let blobs_before = reg.blob_count();
    let proxy = FaultProxy::start(reg.port, fault);
    let err = publish_fails(&f, &proxy);
    assert_eq!(
        reg.tag_digest("test/files", "v1").as_deref(),
        Some(good.as_str()),
        "v1 must still be the good digest"
    );
    (err, blobs_before)
}

/// Acceptance 4a and 5: a registry reporting another Docker-Content-Digest
/// fails the publish; the tag is never applied (read from the registry).
#[test]
fn lying_digest_header_fails_and_applies_no_tag() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.port, Fault::LieDigestHeader);
    let f = files_image("pub-lie");
    let err = publish_fails(&f, &proxy);
    assert!(err.contains("identity cross-check failed"), "{err}");
    assert!(
        err.contains("reported Docker-Content-Digest sha256:0000"),
        "{err}"
    );
    assert!(err.contains("no tag was applied"), "{err}");
    assert_eq!(
        reg.tag_digest("test/files", "v1"),
        None,
        "the tag must not exist"
    );

    // With a good version tagged, a lying publish of a new version keeps it.
    failed_update(&reg, "pub-lie-2", Fault::LieDigestHeader);
}

/// Acceptance 4b and 5: altered manifest bytes served on GET fail the
/// cross-check; the tag still points at the previous good digest.
#[test]
fn altered_manifest_bytes_fail_and_keep_the_previous_tag() {
    let reg = Registry::start();
    let (err, _) = failed_update(&reg, "pub-alter", Fault::AlterManifestBytes);
    assert!(err.contains("identity cross-check failed"), "{err}");
    assert!(
        err.contains("the manifest fetched by digest hashes to"),
        "{err}"
    );
}

/// The tag is read back after it is written: a registry whose tag resolves
/// to other bytes fails the publish; the tag names only the digest that
/// passed the check by digest, never the altered bytes.
#[test]
fn tag_that_reads_back_differently_fails_the_publish() {
    let reg = Registry::start();
    let f = files_image("pub-tagread");
    let proxy = FaultProxy::start(reg.port, Fault::AlterTagBytes);
    let err = publish_fails(&f, &proxy);
    assert!(err.contains("identity cross-check failed for tag"), "{err}");
    assert!(err.contains("tag v1 resolves to"), "{err}");
    let built = built_digest(&f);
    assert_eq!(
        reg.tag_digest("test/files", "v1").as_deref(),
        Some(built.as_str())
    );
}

/// Acceptance 4c and 5: a connection dropped during a blob upload fails
/// the publish; the tag still points at the previous good digest.
#[test]
fn dropped_blob_upload_fails_and_keeps_the_previous_tag() {
    let reg = Registry::start();
    let (err, blobs_before) = failed_update(&reg, "pub-drop", Fault::DropBlobUpload);
    assert!(err.contains("uploading blob sha256:"), "{err}");
    assert!(err.contains("failed"), "{err}");
    assert_eq!(
        reg.blob_count(),
        blobs_before,
        "the dropped blob was not stored"
    );
}

/// Acceptance 6: the password appears in no output and no file under target/.
#[test]
fn password_never_appears_in_output_or_files() {
    let password = "Pw-7hQ2-lane-secret-x9";
    let wrong = "Wrong-4kT8-lane-secret";
    let reg = Registry::start_with_auth("ci", password);
    let f = files_image("pub-secret");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"));
    let mut outputs = Vec::new();
    // From the environment, human and JSON output.
    let env = Creds::env("ci", password);
    for args in [
        vec!["publish", "--registry", &reg.host()],
        vec!["publish", "--registry", &reg.host(), "--json"],
    ] {
        let out = env.xtask(&f, &args);
        assert!(out.status.success(), "{}", show(&out));
        outputs.push(out);
    }
    // From Docker's config.json (auths).
    let config = Creds::docker_config(&format!(
        r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#,
        reg.host()
    ));
    let out = config.xtask(
        &f,
        &["publish", "--registry", &reg.host(), "--tag", "from-config"],
    );
    assert!(out.status.success(), "{}", show(&out));
    outputs.push(out);
    // A failure that must not echo the wrong password either.
    let out = Creds::env("ci", wrong).xtask(&f, &["publish", "--registry", &reg.host()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("authentication failed for user ci"));
    outputs.push(out);

    for out in &outputs {
        let all = printed(out);
        for secret in [password, wrong, b64.as_str()] {
            assert!(
                !all.contains(secret),
                "a secret leaked into the output:\n{all}"
            );
        }
    }
    let files = files_under(&f.path("target"));
    assert!(!files.is_empty());
    for file in files {
        let bytes = fs::read(&file).unwrap();
        for secret in [password, wrong, b64.as_str()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} contains a secret",
                file.display()
            );
        }
    }
    assert!(reg.tag_digest("test/files", "from-config").is_some());
}

/// The sample service, built with cargo, published with credentials from a
/// Docker credential helper (the docker-credential-helpers protocol).
#[test]
fn hello_is_published_with_a_credential_helper() {
    let reg = Registry::start_with_auth("helper-user", "helper-pass");
    let f = Fixture::copy_of_repo("pub-hello");
    let creds = Creds::docker_config(&format!(
        r#"{{"credHelpers":{{"{}":"lanetest"}}}}"#,
        reg.host()
    ));
    let bin = creds.docker_config.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-lanetest");
    // Answers `get` for exactly this server, as real helpers do.
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"helper-user\",\"Secret\":\"helper-pass\"}}'\n",
            reg.host()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut creds = creds;
    creds.path_prepend = Some(bin);
    let out = creds.xtask(
        &f,
        &[
            "publish",
            "hello",
            "--registry",
            &format!("{}/lane", reg.host()),
            "--json",
        ],
    );
    let report = json(&out);
    // hello's workspace base (base-cc) is published first, then hello.
    assert_eq!(column(&report["images"], "image"), ["base-cc", "hello"]);
    let image = &report["images"][1];
    assert_eq!(image["repository"], "lane/platform/hello");
    let digest = image["digest"].as_str().unwrap();
    let raw = reg
        .skopeo_raw("lane/platform/hello:latest")
        .expect("tag latest");
    assert_eq!(sha256_of(&raw), digest);
    let inspected = reg.skopeo_inspect(&format!("lane/platform/hello@{digest}"));
    assert!(inspected.status.success(), "{}", show(&inspected));
}

/// With no registry, images go into the local OCI layout store, which an
/// independent reader (skopeo's oci: transport) resolves to the digest.
#[test]
fn without_a_registry_publishes_into_the_local_store() {
    let f = files_image("pub-local");
    let first = json(&Creds::none().xtask(&f, &["publish", "--json"]));
    let image = &first["images"][0];
    assert_eq!(image["registry"], serde_json::Value::Null);
    assert_eq!(image["blobs"]["uploaded"], 3);
    let digest = image["digest"].as_str().unwrap();
    let store = f.path("target/local-registry/test/files");
    let v1 = || {
        run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci:{}:v1", store.display())),
        )
        .stdout
    };
    assert_eq!(sha256_of(&v1()), digest);
    let again = json(&Creds::none().xtask(&f, &["publish", "--json"]));
    assert_eq!(again["images"][0]["blobs"]["bytes_uploaded"], 0);
    assert_eq!(again["images"][0]["blobs"]["skipped"], 3);
    // A new version moves the tag; the old digest stays in the store.
    change_content(&f);
    let third = json(&Creds::none().xtask(&f, &["publish", "--json"]));
    let new = third["images"][0]["digest"].as_str().unwrap();
    assert_ne!(new, digest);
    assert_eq!(
        third["images"][0]["blobs"]["uploaded"], 2,
        "the changed layer and the config"
    );
    assert_eq!(sha256_of(&v1()), new);
}

/// Issue 27, finding 1 and 2 (acceptance 1): the environment's credential
/// belongs to the release registry (`--registry` / `LANE_REGISTRY`) only.
/// A recorder on 127.0.0.2 (another host) logs every request: verify,
/// audit and promote of a reference there, a base pulled from there, a
/// Bearer realm there and an upload `Location` there receive no
/// credential; the realm and the Location, plain http to another host,
/// are not contacted at all.
#[test]
fn the_environments_credential_goes_to_the_release_registry_only() {
    use crate::support::registry::Recorder2;
    let reg = Registry::start_with_auth("ci", "s3cret-pass");
    let thief = Recorder2::start();
    let f = files_image("cred-scope");
    f.write("ci/release-policy.toml", "version = 1\n");
    f.commit("a policy");
    let creds = || {
        let mut c = Creds::env("ci", "s3cret-pass");
        c.env.push(("LANE_REGISTRY".into(), reg.host()));
        c
    };
    let zeros = "0".repeat(64);
    let elsewhere = format!("{}/platform/hello@sha256:{zeros}", thief.host());
    for args in [
        vec!["verify", elsewhere.as_str()],
        vec!["audit", elsewhere.as_str()],
        vec!["promote", elsewhere.as_str(), "--tag", "prod"],
    ] {
        let out = creds().xtask(&f, &args);
        assert!(!out.status.success(), "{args:?}: {}", show(&out));
    }
    assert!(
        thief.requests().len() >= 3,
        "the reference's host was asked: {:?}",
        thief.requests()
    );
    // A base image pinned on the other host.
    f.write(
        "images/files/image.toml",
        &IMAGE.replace(
            "tags = [\"v1\"]\n",
            &format!(
                "tags = [\"v1\"]\nbase = \"{}/base@sha256:{zeros}\"\n",
                thief.host()
            ),
        ),
    );
    let out = creds().xtask(&f, &["build", "files"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert_eq!(
        thief.with_credentials(),
        Vec::<String>::new(),
        "no credential reached 127.0.0.2"
    );
    f.write("images/files/image.toml", IMAGE);

    // A registry whose token realm, and one whose upload Location, is on
    // the other host, over plain http: refused, nothing sent there.
    let before = thief.requests().len();
    let realm = FaultProxy::start(reg.port, Fault::BearerRealmOn2(thief.port));
    let out = Creds::env("ci", "s3cret-pass").xtask(&f, &["publish", "--registry", &realm.host()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("token realm") && stderr(&out).contains("refused"),
        "{}",
        show(&out)
    );
    assert_eq!(
        thief.requests().len(),
        before,
        "the realm on the other host was not contacted: {:?}",
        thief.requests()
    );
    // The upload Location on the other host: the lane's own DELETE (the
    // push-permission probe's cleanup) is not sent there, and no request
    // there carries a credential. (The upload's PUT itself is oci-client's,
    // which follows the Location without the registry's credential.)
    let location = FaultProxy::start(reg.port, Fault::LocationOn2(thief.port));
    let _ = Creds::env("ci", "s3cret-pass").xtask(&f, &["publish", "--registry", &location.host()]);
    assert!(location.hits() > 0, "the Location was rewritten");
    let there = thief.requests();
    assert!(
        there.iter().all(|h| !h.starts_with("DELETE")),
        "no DELETE to the other host: {there:?}"
    );
    assert_eq!(thief.with_credentials(), Vec::<String>::new(), "{there:?}");
    // The release registry itself still gets the credential.
    let out = creds().xtask(&f, &["publish", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
}

/// Issue 27, finding 13: the secrets in the lane's environment (registry
/// password, signing key PEM, OIDC request token) never reach a
/// subprocess. A credential helper (a subprocess the lane runs) writes its
/// whole environment to a file; none of the secrets is in it.
#[test]
fn subprocesses_inherit_no_secret() {
    let f = files_image("no-secret-env");
    f.write("ci/release-policy.toml", "version = 1\n");
    f.commit("a policy");
    let creds = Creds::docker_config(r#"{"credsStore":"spy"}"#);
    let bin = creds.docker_config.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let dump = creds.docker_config.path().join("helper-env");
    let helper = bin.join("docker-credential-spy");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\nenv > '{}'\necho 'credentials not found in native keychain'\nexit 1\n",
            dump.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut creds = creds;
    creds.path_prepend = Some(bin);
    let secrets = [
        ("LANE_REGISTRY_USER", "ci"),
        ("LANE_REGISTRY_PASSWORD", "pass-0f1e2d"),
        ("LANE_SIGNING_KEY", "-----BEGIN PRIVATE KEY-----key-9a8b7c"),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "req-5d6e7f"),
    ];
    for (k, v) in secrets {
        creds.env.push((k.into(), v.into()));
    }
    // A reference on a registry the environment's credential does not
    // belong to: the lane asks the Docker config's helper.
    let reg = Registry::start();
    let zeros = "0".repeat(64);
    let _ = creds.xtask(
        &f,
        &["verify", &format!("{}/x/y@sha256:{zeros}", reg.host())],
    );
    let env = fs::read_to_string(&dump).expect("the helper ran");
    assert!(env.contains("PATH="), "{env}");
    for (k, v) in &secrets[1..] {
        assert!(!env.contains(v), "{k} reached the helper:\n{env}");
    }
}
