//! `cargo xtask release --registry` against the real Distribution registry
//! and the real Docker Engine (issue 6): acceptance, each built-in gate
//! failing, evidence fetched back from the registry, no secret leaked.

use std::fs;
use std::process::Output;

use crate::support::registry::{
    CI_BUILDER_ID, Creds, Fault, FaultProxy, Registry, files_under, http,
};
use crate::support::{
    self, Fixture, embed_build_path, gate, hello, printed, show, strings, unique,
};

const USER: &str = "ci";
/// Made at run time, so that it appears in no source file the lane copies.
fn password() -> String {
    format!("pw-{}", unique())
}

/// `release hello --registry REGISTRY` with these credentials.
fn release(c: &Creds, f: &Fixture, registry: &str) -> (Output, serde_json::Value) {
    f.release(Some(c), &["hello", "--registry", registry])
}

/// Every statement attached to `digest` in `repo`, read straight from the
/// registry (referrers tag fallback -> artifact manifests -> DSSE blobs).
fn attached(reg: &Registry, repo: &str, digest: &str) -> Vec<serde_json::Value> {
    let basic = reg.auth.as_ref().map(|(u, p)| {
        format!(
            "Basic {}",
            lane_core::evidence::base64(format!("{u}:{p}").as_bytes())
        )
    });
    let headers: Vec<(&str, &str)> = basic
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let Some(index) = reg.skopeo_raw(&format!("{repo}:{}", digest.replace(':', "-"))) else {
        return Vec::new();
    };
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let mut out = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let raw = reg
            .skopeo_raw(&format!("{repo}@{}", m["digest"].as_str().unwrap()))
            .expect("artifact manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            manifest["subject"]["digest"], digest,
            "the artifact names the image as its subject"
        );
        let blob = manifest["layers"][0]["digest"].as_str().unwrap();
        let (status, _, body) = http(
            reg.port,
            "GET",
            &format!("/v2/{repo}/blobs/{blob}"),
            &headers,
        )
        .unwrap();
        assert_eq!(status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        match doc.get("payload").and_then(|p| p.as_str()) {
            Some(p) => out
                .push(serde_json::from_slice(&lane_core::evidence::unbase64(p).unwrap()).unwrap()),
            None => out.push(doc),
        }
    }
    out
}

/// The statement of a predicate type among those attached.
fn statement<'a>(all: &'a [serde_json::Value], predicate: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|s| s["predicateType"] == predicate)
        .unwrap_or_else(|| panic!("no {predicate} statement in {all:?}"))
}

fn record(all: &[serde_json::Value]) -> &serde_json::Value {
    all.iter()
        .find(|s| s.get("release").is_some())
        .expect("a release record is attached")
}

#[test]
fn a_full_release_is_accepted_with_provenance_in_the_registry_and_no_secret_anywhere() {
    let pass = password();
    let reg = Registry::start_with_auth(USER, &pass);
    let f = Fixture::copy_of_repo("relreg-ok");
    let c = Creds::env(USER, &pass).ci(&f);
    let (out, report) = release(&c, &f, &reg.host());
    assert!(out.status.success(), "{}", show(&out));
    let h = hello(&report);
    assert_eq!(h["accepted"], true);
    let digest = h["digest"].as_str().unwrap();
    assert_eq!(
        reg.tag_digest("platform/hello", "latest").as_deref(),
        Some(digest),
        "the release tag points at the digest"
    );

    let all = attached(&reg, "platform/hello", digest);
    let prov = statement(&all, "https://slsa.dev/provenance/v1");
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    assert_eq!(
        prov["subject"][0]["name"],
        format!("{}/platform/hello", reg.host())
    );
    let def = &prov["predicate"]["buildDefinition"];
    let head = support::git(&f.root, &["rev-parse", "HEAD"]);
    assert_eq!(def["externalParameters"]["source"]["revision"], head.trim());
    let deps = def["resolvedDependencies"].as_array().unwrap();
    let cargo_lock = support::sha256_hex_of_file(&f.path("Cargo.lock"));
    assert!(
        deps.iter().any(|d| d["name"] == "Cargo.lock"
            && format!("sha256:{}", d["digest"]["sha256"].as_str().unwrap()) == cargo_lock),
        "{deps:?}"
    );
    for entry in fs::read_dir(f.path("lockfiles")).unwrap() {
        let name = format!("lockfiles/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(
            deps.iter().any(|d| d["name"] == name.as_str()),
            "{name} missing from {deps:?}"
        );
    }
    assert!(
        deps.iter()
            .any(|d| d["uri"].as_str().is_some_and(|u| u.starts_with("git+")))
    );
    let builder = &prov["predicate"]["runDetails"]["builder"];
    assert_eq!(builder["id"], CI_BUILDER_ID);
    let gates = statement(&all, "https://in-toto.io/attestation/test-result/v0.1");
    assert_eq!(gates["predicate"]["result"], "PASSED");
    let passed = strings(&gates["predicate"]["passedTests"]);
    for g in lane_core::gates::BUILT_IN
        .iter()
        .chain([lane_core::gates::GateName::AuthoritativeBuilder].iter())
    {
        assert!(
            passed.iter().any(|p| p == g.as_str()),
            "gate {g} not passed: {passed:?}"
        );
    }
    assert_eq!(gates["predicate"]["failedTests"], serde_json::json!([]));

    // Issue 15: every statement the release attached parses with the strict
    // independent validators (in-toto Statement v1, SLSA Provenance v1,
    // test-result v0.1; unknown fields rejected), and so does the SBOM.
    let dir = f.path("target/conformance");
    fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, s) in all.iter().filter(|s| s.get("_type").is_some()).enumerate() {
        let p = dir.join(format!("statement-{i}.json"));
        fs::write(&p, serde_json::to_vec(s).unwrap()).unwrap();
        files.push(p);
    }
    assert_eq!(files.len(), 3, "provenance, gate statement, SBOM: {all:?}");
    let root = support::repo_root();
    let venv = xtask::adapters::validators::venv(&root, &|k| std::env::var(k).ok());
    let checked = xtask::adapters::validators::check_statements(&root, &venv, &files).unwrap();
    assert!(checked.accepted, "{}", checked.output);
    let sbom = statement(&all, lane_core::sbom::PREDICATE_TYPE);
    let sbom_file = dir.join("hello.spdx.json");
    fs::write(&sbom_file, serde_json::to_vec(&sbom["predicate"]).unwrap()).unwrap();
    let checked = xtask::adapters::validators::check_sbom(&root, &venv, &[sbom_file]).unwrap();
    assert!(checked.accepted, "{}", checked.output);

    // Every .deb of base-cc is a resolved dependency, with its purl and
    // sha256, and an SPDX package of the SBOM.
    let lock = lane_core::debian::parse_lock(&f.read("lockfiles/debian.lock")).unwrap();
    let debs = lock.packages_of("base-cc").expect("base-cc is locked");
    assert!(debs.len() >= 6, "{debs:?}");
    let packages = sbom["predicate"]["packages"].as_array().unwrap();
    for p in debs {
        let purl = lane_core::purl::deb(&p.name, &p.version, &p.architecture, None).unwrap();
        let hex = p.sha256.trim_start_matches("sha256:");
        assert!(
            deps.iter()
                .any(|d| d["uri"] == purl.as_str() && d["digest"]["sha256"] == hex),
            "{purl} (sha256 {}) is not in resolvedDependencies: {deps:?}",
            p.sha256
        );
        assert!(
            packages.iter().any(|x| x["name"] == p.name.as_str()
                && x["versionInfo"] == p.version.as_str()
                && x["checksums"][0]["checksumValue"] == hex),
            "{} {} is not in the SBOM",
            p.name,
            p.version
        );
    }
    // Every crate compiled into the hello binary (as `cargo tree` sees it)
    // is an SPDX package of the SBOM.
    let tree = support::stdout_of(
        std::process::Command::new("cargo")
            .args([
                "tree", "-p", "hello", "-e", "normal", "--prefix", "none", "-f", "{p}",
            ])
            .current_dir(&f.root),
    );
    let mut crates = 0;
    for line in tree.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (name, version) = (words.next().unwrap(), words.next().unwrap());
        let version = version.trim_start_matches('v');
        assert!(
            packages
                .iter()
                .any(|x| x["name"] == name && x["versionInfo"] == version),
            "crate {name} {version} is not in the SBOM"
        );
        crates += 1;
    }
    assert!(crates >= 1, "{tree}");
    assert_eq!(gate(h, "sbom-complete")["state"], "passed");

    // No secret in the output, the files the lane wrote, or the evidence.
    assert!(!printed(&out).contains(&pass));
    for file in files_under(&f.path("target")) {
        if let Ok(bytes) = fs::read(&file) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&pass),
                "password in {}",
                file.display()
            );
        }
    }
    for s in &all {
        assert!(!s.to_string().contains(&pass));
    }
}

/// Runs a release expected to be rejected because of the gate `name`, and checks:
/// non-zero exit, the tag not moved (read from the registry), and the
/// rejection record attached to the candidate digest naming the gate.
fn rejected_because(
    reg: &Registry,
    registry: &str,
    c: &Creds,
    f: &Fixture,
    name: &str,
    before: Option<&str>,
) -> serde_json::Value {
    let (out, report) = release(c, f, registry);
    assert!(
        !out.status.success(),
        "the release must be rejected:\n{}",
        show(&out)
    );
    let h = hello(&report).clone();
    assert_eq!(h["accepted"], false);
    assert_ne!(gate(&h, name)["state"], "passed", "{name} must fail: {h}");
    assert_eq!(
        reg.tag_digest("platform/hello", "latest").as_deref(),
        before,
        "the release tag must not move"
    );
    let digest = h["digest"].as_str().unwrap();
    let all = attached(reg, "platform/hello", digest);
    let rec = record(&all);
    assert_eq!(rec["release"]["accepted"], false);
    let failed = strings(&rec["gateStatement"]["predicate"]["failedTests"]);
    assert!(
        failed.iter().any(|g| g == name),
        "the record names {name}: {failed:?}"
    );
    h
}

#[test]
fn a_dirty_tree_and_a_failing_smoke_command_are_rejected() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("relreg-dirty");
    let c = Creds::none().ci(&f);
    f.write(
        "images/hello/rootfs/etc/hello/hello.conf",
        "greeting=not committed\n",
    );
    rejected_because(&reg, &reg.host(), &c, &f, "source-state", None);

    let f = Fixture::copy_of_repo("relreg-smoke");
    let c = Creds::none().ci(&f);
    f.edit(
        "images/hello/image.toml",
        "expect_output = \"self-check ok\"",
        "expect_output = \"self-check FINE\"",
    );
    f.commit("a smoke command that cannot pass");
    let h = rejected_because(&reg, &reg.host(), &c, &f, "smoke", None);
    assert_eq!(gate(&h, "source-state")["state"], "passed");
}

#[test]
fn drift_and_a_missing_engine_are_rejected() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("relreg-drift");
    let c = Creds::none().ci(&f);
    // A dynamically linked binary on scratch: its interpreter and libc are missing.
    f.edit(
        "images/hello/image.toml",
        "base = \"workspace://base-cc\"",
        "base = \"scratch\"",
    );
    f.commit("dynamic on scratch");
    let h = rejected_because(&reg, &reg.host(), &c, &f, "no-drift", None);
    assert_eq!(
        gate(&h, "smoke")["state"],
        "failed",
        "the engine agrees: it cannot start either"
    );

    let f = Fixture::copy_of_repo("relreg-engine");
    let mut c = Creds::none().ci(&f);
    c.env.push((
        "DOCKER_HOST".into(),
        "unix:///tmp/lane-test-no-engine.sock".into(),
    ));
    let h = rejected_because(&reg, &reg.host(), &c, &f, "smoke", None);
    let summary = &gate(&h, "smoke")["summary"];
    assert!(
        summary
            .as_str()
            .unwrap()
            .contains("Docker Engine not reachable at unix:///tmp/lane-test-no-engine.sock"),
        "{summary}"
    );
}

#[test]
fn a_non_reproducible_build_and_a_lying_registry_are_rejected() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("relreg-repro");
    let c = Creds::none().ci(&f);
    embed_build_path(&f);
    rejected_because(&reg, &reg.host(), &c, &f, "reproducible", None);

    // A first good release, then a registry that lies about digests.
    let f = Fixture::copy_of_repo("relreg-lie");
    let c = Creds::none().ci(&f);
    let (out, report) = release(&c, &f, &reg.host());
    assert!(out.status.success(), "{}", show(&out));
    let good = hello(&report)["digest"].as_str().unwrap().to_string();
    f.write(
        "images/hello/rootfs/etc/hello/hello.conf",
        "greeting=second version\n",
    );
    f.commit("second version");
    let proxy = FaultProxy::start(reg.port, Fault::LieDigestHeader);
    rejected_because(
        &reg,
        &proxy.host(),
        &c,
        &f,
        "publish-cross-check",
        Some(&good),
    );
}

#[test]
fn a_local_builder_cannot_release_to_a_registry() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("relreg-local");
    let h = rejected_because(
        &reg,
        &reg.host(),
        &Creds::none(),
        &f,
        "authoritative-builder",
        None,
    );
    assert_eq!(gate(&h, "smoke")["state"], "passed");
}

#[test]
fn same_inputs_give_the_same_digest_and_decision_in_the_registry() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("relreg-twice");
    let c = Creds::none().ci(&f);
    let (o1, r1) = release(&c, &f, &reg.host());
    let (o2, r2) = release(&c, &f, &reg.host());
    assert!(
        o1.status.success() && o2.status.success(),
        "{}\n{}",
        show(&o1),
        show(&o2)
    );
    assert_eq!(hello(&r1)["digest"], hello(&r2)["digest"]);
    assert_eq!(hello(&r1)["accepted"], hello(&r2)["accepted"]);
    // The SBOM is reproducible: both runs attached the same artifact (the
    // evidence is provenance, gate statement, SBOM, record, in that order;
    // the provenance differs, it records when each run started).
    let evidence = |r: &serde_json::Value| hello(r)["evidence"].as_array().unwrap().clone();
    let (e1, e2) = (evidence(&r1), evidence(&r2));
    assert_eq!(e1.len(), 4, "{e1:?}");
    assert_eq!(e1[2], e2[2], "the same SBOM bytes from the same inputs");
    assert_ne!(e1[0], e2[0], "each run's provenance records its own times");
    let all = attached(
        &reg,
        "platform/hello",
        hello(&r1)["digest"].as_str().unwrap(),
    );
    let sbom = statement(&all, lane_core::sbom::PREDICATE_TYPE);
    assert_eq!(sbom["predicate"]["spdxVersion"], "SPDX-2.3");
}

#[test]
fn a_stale_lock_is_rejected() {
    let reg = Registry::start();
    let f = Fixture::copy_of_repo("relreg-lock");
    let c = Creds::none().ci(&f);
    // The lock no longer matches what `cargo xtask lock` resolves (a field of
    // one package edited by hand); the locked .debs themselves still verify.
    f.edit(
        "lockfiles/debian.lock",
        "required_by = [\"ca-certificates\"]",
        "required_by = [\"ca-certificates\", \"edited-by-hand\"]",
    );
    f.commit("hand-edited lock");
    let h = rejected_because(&reg, &reg.host(), &c, &f, "pinned-inputs", None);
    let summary = &gate(&h, "pinned-inputs")["summary"];
    assert!(
        summary
            .as_str()
            .unwrap()
            .contains("package ca-certificates changed: required_by"),
        "{summary}"
    );
}
