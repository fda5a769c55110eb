//! `cargo xtask release` end to end (issue 6): gates, decisions, records,
//! provenance, against the embedded local store.

use std::fs;

use crate::support::report_image as image_of;
use crate::support::{Fixture, gate, hello, show};

/// The tag `hello` would get in the local store, if any.
fn local_tag(f: &Fixture, tag: &str) -> Option<String> {
    let index = fs::read(f.path("target/local-registry/platform/hello/index.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&index).unwrap();
    v["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .map(|m| m["digest"].as_str().unwrap().to_string())
}

#[test]
fn a_dirty_tree_is_rejected_and_the_rejection_is_recorded() {
    let f = Fixture::copy_of_repo("rel-dirty");
    f.write(
        "images/hello/rootfs/etc/hello/hello.conf",
        "greeting=uncommitted\n",
    );
    let (out, report) = f.release(None, &["hello"]);
    assert!(!out.status.success(), "a dirty tree must not release");
    let h = hello(&report);
    assert_eq!(h["accepted"], false);
    assert_eq!(gate(h, "source-state")["state"], "failed");
    assert!(
        gate(h, "source-state")["summary"]
            .as_str()
            .unwrap()
            .contains("uncommitted changes")
    );
    assert!(
        h["decision"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("source-state: failed"))
    );
    assert_eq!(h["tagged"], serde_json::json!([]));
    assert_eq!(local_tag(&f, "latest"), None, "no tag moves on rejection");
    // The record names the failed gate, on disk and attached to the candidate.
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(h["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(record["release"]["accepted"], false);
    assert!(
        record["gateStatement"]["predicate"]["failedTests"]
            .as_array()
            .unwrap()
            .contains(&"source-state".into())
    );
    let digest = h["digest"].as_str().unwrap();
    let fallback = digest.replace("sha256:", "sha256-");
    assert!(
        local_tag(&f, &fallback).is_some(),
        "evidence is attached to the rejected candidate"
    );
    assert_eq!(
        h["evidence"].as_array().unwrap().len(),
        4,
        "provenance, gate statement, SBOM, record"
    );
}

#[test]
fn a_policy_that_downgrades_a_built_in_gate_is_refused_before_building() {
    let f = Fixture::copy_of_repo("rel-policy");
    f.write(
        "ci/release-policy.toml",
        "version = 1\n[gates]\nwarn = [\"smoke\"]\n",
    );
    f.commit("downgrade smoke");
    let out = f.xtask(&["release"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "ci/release-policy.toml: gates.warn lists \"smoke\", a built-in required gate"
        ),
        "{stderr}"
    );
    assert!(!f.path("target/images").exists(), "nothing is built");
}

#[test]
fn same_inputs_same_digest_and_decision_and_changed_inputs_show_in_provenance() {
    let f = Fixture::copy_of_repo("rel-twice");
    let (o1, r1) = f.release(None, &["hello"]);
    let (o2, r2) = f.release(None, &["hello"]);
    assert_eq!(o1.status.success(), o2.status.success());
    assert_eq!(hello(&r1)["digest"], hello(&r2)["digest"]);
    assert_eq!(hello(&r1)["accepted"], hello(&r2)["accepted"]);
    let gates = |r: &serde_json::Value| -> Vec<(String, String)> {
        hello(r)["decision"]["gates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["gate"].as_str().unwrap().to_string(),
                    g["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(gates(&r1), gates(&r2));

    // One source byte changes the digest, and the provenance names the new revision.
    let rev1 = hello(&r1)["provenance"]["predicate"]["buildDefinition"]["externalParameters"]["source"]["revision"].clone();
    f.write(
        "images/hello/rootfs/etc/hello/hello.conf",
        "greeting=hello from the release lanf\n",
    );
    f.commit("one byte");
    let (_, r3) = f.release(None, &["hello"]);
    assert_ne!(hello(&r3)["digest"], hello(&r1)["digest"]);
    let prov = &hello(&r3)["provenance"];
    assert_ne!(
        prov["predicate"]["buildDefinition"]["externalParameters"]["source"]["revision"],
        rev1
    );
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        hello(&r3)["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
    );

    // A lockfile entry shows up among the resolved dependencies.
    f.write("lockfiles/extra.lock", "pinned = 1\n");
    f.commit("lockfile");
    let (_, r4) = f.release(None, &["hello"]);
    let deps = hello(&r4)["provenance"]["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        deps.iter().any(|d| d["name"] == "lockfiles/extra.lock"),
        "{deps:?}"
    );
    assert!(deps.iter().any(|d| d["name"] == "Cargo.lock"), "{deps:?}");
}

/// The `sbom-complete` gate, fault injected: the image's dpkg database
/// lists a package the SBOM (made from the Debian lock) does not carry, as
/// when a layer smuggles a package past the lock. The release is rejected,
/// naming the package, and no tag moves.
#[test]
fn a_package_left_out_of_the_sbom_rejects_the_release() {
    let f = Fixture::copy_of_repo("rel-sbom");
    f.write(
        "images/hello/rootfs/var/lib/dpkg/status.d/smuggled",
        "Package: smuggled\nVersion: 1.0\nArchitecture: amd64\n",
    );
    let toml = f.read("images/hello/image.toml");
    f.write(
        "images/hello/image.toml",
        &toml.replace(
            "[config]",
            "[[layer]]\nname = \"smuggled\"\nfiles = [{ src = \"rootfs/var/lib/dpkg/status.d/smuggled\", dest = \"/var/lib/dpkg/status.d/smuggled\" }]\n\n[config]",
        ),
    );
    f.commit("a package outside the lock");
    let (out, report) = f.release(None, &["hello"]);
    assert!(
        !out.status.success(),
        "an incomplete SBOM must reject the release"
    );
    let h = hello(&report);
    let g = gate(h, "sbom-complete");
    assert_eq!(g["state"], "failed", "{g}");
    assert!(g["summary"].as_str().unwrap().contains("smuggled"), "{g}");
    assert_eq!(g["evidence"]["missing"], serde_json::json!(["smuggled"]));
    assert_eq!(h["tagged"], serde_json::json!([]));
    assert_eq!(local_tag(&f, "latest"), None, "no tag moves on rejection");
    // Every other built-in gate passed: the SBOM alone rejected it.
    for g in h["decision"]["gates"].as_array().unwrap() {
        if g["gate"] != "sbom-complete"
            && h["decision"]["required"]
                .as_array()
                .unwrap()
                .contains(&g["gate"])
        {
            assert_eq!(g["state"], "passed", "{g}");
        }
    }
}

/// Issue 27 (acceptance 3): a layer holding a PEM private key and a
/// checkout's token header rejects the release at no-secrets, naming layer
/// and path (never the secret); nothing is tagged. Allowing those paths in
/// image.toml on purpose passes, and the allowance is in the provenance.
#[test]
fn a_secret_in_a_layer_rejects_the_release_and_an_allowed_path_passes_in_the_provenance() {
    let image = crate::verify::IMAGE.replace(
        "  { src = \"data/one.txt\", dest = \"/srv/one.txt\" },",
        "  { src = \"data/one.txt\", dest = \"/srv/one.txt\" },\n  { src = \"data/fixture.pem\", dest = \"/srv/fixture.pem\" },\n  { src = \"data/gitconfig\", dest = \"/srv/gitconfig\" },",
    );
    let (f, _keys, key) = crate::support::signed_files_workspace("no-secrets", &image);
    let secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    f.write(
        "images/files/data/fixture.pem",
        &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
    );
    let token = "eC1hY2Nlc3MtdG9rZW46Z2hzX3NlY3JldA==";
    f.write(
        "images/files/data/gitconfig",
        &format!("[http \"https://github.com/\"]\n\textraheader = AUTHORIZATION: basic {token}\n"),
    );
    f.commit("two secrets in the image");
    let (out, r) = f.release(None, &["--signing-key", &key]);
    assert!(!out.status.success(), "{}", show(&out));
    let i = image_of(&r, "files");
    let g = gate(i, "no-secrets");
    assert_eq!(g["state"], "failed", "{g}");
    let summary = g["summary"].as_str().unwrap();
    for needle in [
        "private-key in layer sha256:",
        "at /srv/fixture.pem",
        "authorization-header in layer",
        "at /srv/gitconfig",
        "[secrets] allow",
    ] {
        assert!(summary.contains(needle), "no {needle:?} in {summary}");
    }
    let all = serde_json::to_string(&r).unwrap() + &crate::support::stderr(&out);
    assert!(
        !all.contains(secret) && !all.contains(token),
        "a secret was printed"
    );
    assert_eq!(i["tagged"], serde_json::json!([]));

    // Allowed on purpose: passes, and the provenance says so.
    f.write(
        "images/files/image.toml",
        &format!("{image}\n[secrets]\nallow = [\"/srv/fixture.pem\", \"/srv/gitconfig\"]\n"),
    );
    f.commit("the fixtures are allowed");
    let (out, r) = f.release(None, &["--signing-key", &key]);
    assert!(out.status.success(), "{}", show(&out));
    let i = image_of(&r, "files");
    assert_eq!(gate(i, "no-secrets")["state"], "passed");
    assert_eq!(
        gate(i, "no-secrets")["evidence"]["allowed"],
        serde_json::json!(["/srv/fixture.pem", "/srv/gitconfig"])
    );
    assert_eq!(
        i["provenance"]["predicate"]["buildDefinition"]["externalParameters"]["secretsAllowed"],
        serde_json::json!(["/srv/fixture.pem", "/srv/gitconfig"])
    );
}
