//! What a digest proved is not proven again (issue 25, point 6): a release
//! of a digest that already carries a signed gate statement of an accepted
//! release, under the same policy and gate definitions, carries the
//! image-bound gates over (reproducible, no-drift, no-unused-packages,
//! smoke, sbom-complete) and runs the commit-bound ones; anything else
//! runs every gate.

use std::fs;

use serde_json::Value;

use crate::support::registry::{Creds, Registry};
use crate::support::{self, Fixture, TempDir, gate, hello, show, signed_files_workspace};

/// The gates of a released image that were carried over, by name.
fn reused(image: &Value) -> Vec<String> {
    image["decision"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g.get("reused").is_some())
        .map(|g| g["gate"].as_str().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Sorted, as [`reused`] lists them.
const IMAGE_BOUND: [&str; 6] = [
    "no-drift",
    "no-secrets",
    "no-unused-packages",
    "reproducible",
    "sbom-complete",
    "smoke",
];

/// Makes a key with `keygen`, and writes its public half into the
/// fixture's policy as the one trusted key (the rest of the policy kept).
fn trust_a_new_key(f: &Fixture) -> (TempDir, String) {
    let keys = TempDir::new("keys");
    let out = f.ok(&["keygen", "--out", keys.path().to_str().unwrap(), "--json"]);
    let k: Value = serde_json::from_str(&out).unwrap();
    let public = fs::read_to_string(k["public_key"].as_str().unwrap()).unwrap();
    let mut policy: toml::Table = f.read("ci/release-policy.toml").parse().unwrap();
    let mut signing = toml::Table::new();
    signing.insert(
        "trusted_keys".into(),
        vec![toml::Value::from(public)].into(),
    );
    policy.insert("signing".into(), signing.into());
    f.write("ci/release-policy.toml", &toml::to_string(&policy).unwrap());
    f.commit("policy trusts the lane's key");
    (keys, k["private_key"].as_str().unwrap().to_string())
}

/// Acceptance 2: a commit that changes only README.md, released from CI
/// to a real registry: the same digest, nothing compressed, no blob byte
/// uploaded, no smoke container (the engine is not even reachable), the
/// image-bound gates carried over from the first release's signed gate
/// statement, a new signed provenance for the new commit, and `audit`
/// lists both commits for the digest.
#[test]
fn a_readme_only_commit_carries_the_image_gates_over_and_audit_lists_both_commits() {
    let reg = Registry::start();
    let host = reg.host();
    let f = Fixture::copy_of_repo("reuse-readme");
    let (_keys, key) = trust_a_new_key(&f);
    let ci = Creds::none().ci(&f);
    let first_rev = support::git(&f.root, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let (out, r1) = f.release(
        Some(&ci),
        &["hello", "--registry", &host, "--signing-key", &key],
    );
    assert!(out.status.success(), "{}", show(&out));
    let h1 = hello(&r1);
    assert!(reused(h1).is_empty(), "a first release runs every gate");
    assert!(gate(h1, "smoke")["evidence"]["checks"].is_array());

    f.edit(
        "README.md",
        "# release-lane",
        "# release-lane\n\nOne more line.",
    );
    f.commit("README only");
    let second_rev = support::git(&f.root, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    // A new CI run of the new commit, with no Docker Engine to reach: a
    // smoke container could not be started even by mistake.
    let mut ci2 = Creds::none();
    ci2.env = support::oidc::issuer().run_env(&f, support::oidc::REPOSITORY, "4243");
    ci2.env.push((
        "DOCKER_HOST".into(),
        format!("unix://{}", f.path("no-engine.sock").display()),
    ));
    let (out, r2) = f.release(
        Some(&ci2),
        &["hello", "--registry", &host, "--signing-key", &key],
    );
    assert!(out.status.success(), "{}", show(&out));
    let h2 = hello(&r2);
    assert_eq!(h2["accepted"], true);
    assert_eq!(h1["digest"], h2["digest"], "README.md is no input");
    assert_eq!(h2["cache"]["misses"], 0, "{}", h2["cache"]);
    assert_eq!(h2["cache"]["bytes_compressed"], 0, "{}", h2["cache"]);
    assert_eq!(
        gate(h2, "publish-cross-check")["evidence"]["blobs"]["bytes_uploaded"],
        0,
        "{}",
        gate(h2, "publish-cross-check")
    );
    assert_eq!(reused(h2), IMAGE_BOUND, "{h2}");
    // Carried over from the first release's gate statement (provenance,
    // gate statement, SBOM, record: the second artifact), proved on the
    // first commit.
    let gate_statement = &h1["evidence"][1];
    for g in IMAGE_BOUND {
        assert_eq!(gate(h2, g)["reused"]["from"], *gate_statement, "{g}");
        assert_eq!(gate(h2, g)["reused"]["revision"], first_rev.as_str(), "{g}");
    }
    // The commit-bound gates ran, on the new commit.
    for g in [
        "source-state",
        "pinned-inputs",
        "publish-cross-check",
        "provenance-complete",
        "authoritative-builder",
    ] {
        assert!(gate(h2, g).get("reused").is_none(), "{g} runs every time");
        assert_eq!(gate(h2, g)["state"], "passed", "{g}");
    }
    assert!(
        gate(h2, "source-state")["summary"]
            .as_str()
            .unwrap()
            .contains(&second_rev)
    );
    // The second build was stopped and left nothing behind.
    let repro = f.path("target/repro");
    let left: Vec<_> = fs::read_dir(&repro)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // A new provenance, signed, for the new commit.
    assert_ne!(h1["evidence"][0], h2["evidence"][0]);
    assert_eq!(
        h2["provenance"]["predicate"]["buildDefinition"]["externalParameters"]["source"]["revision"],
        second_rev.as_str()
    );

    let reference = h2["reference"].as_str().unwrap();
    let out = Creds::none().xtask(&f, &["verify", reference]);
    assert!(out.status.success(), "{}", show(&out));
    let out = Creds::none().xtask(&f, &["audit", reference, "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    let releases = a["releases"].as_array().unwrap();
    let revisions: Vec<&str> = releases
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .collect();
    assert_eq!(revisions, [first_rev.as_str(), second_rev.as_str()], "{a}");
    assert!(
        releases
            .iter()
            .all(|r| r["signature"].as_str().unwrap().starts_with("trusted:")),
        "{a}"
    );
    let out = Creds::none().xtask(&f, &["audit", reference]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("releases 2 of this digest"), "{text}");
    assert!(
        text.contains(&first_rev) && text.contains(&second_rev),
        "{text}"
    );
}

/// Acceptance 4: forged earlier evidence (an accepted statement signed by
/// a key the policy does not trust), `--no-reuse`, a changed policy and a
/// changed `[[smoke]]` list each give a full run; the same inputs after a
/// trusted release carry the gates over.
#[test]
fn forged_evidence_no_reuse_a_changed_policy_or_smoke_list_each_run_every_gate() {
    let (f, _keys, key) = signed_files_workspace("reuse-full", crate::verify::IMAGE);
    let release = |extra: &[&str]| {
        let mut args = vec!["--signing-key", key.as_str()];
        args.extend_from_slice(extra);
        let (out, r) = f.release(None, &args);
        assert!(out.status.success(), "{}", show(&out));
        r["images"][0].clone()
    };

    // Forged: an accepted release signed by a key the policy does not trust.
    let intruder = TempDir::new("intruder");
    let out = f.ok(&[
        "keygen",
        "--out",
        intruder.path().to_str().unwrap(),
        "--json",
    ]);
    let k: Value = serde_json::from_str(&out).unwrap();
    let forged_key = k["private_key"].as_str().unwrap();
    let (out, forged) = f.release(None, &["--signing-key", forged_key]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(reused(&forged["images"][0]).is_empty());
    let first = release(&[]);
    assert!(
        reused(&first).is_empty(),
        "an untrusted statement is never carried over: {first}"
    );
    assert_eq!(first["digest"], forged["images"][0]["digest"]);

    // audit keeps the forged release apart: a claim, not a fact.
    let out = f.ok(&["audit", first["reference"].as_str().unwrap(), "--json"]);
    let a: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(a["releases"].as_array().unwrap().len(), 1, "{a}");
    let unverified = a["unverified_releases"].as_array().unwrap();
    assert_eq!(unverified.len(), 1, "{a}");
    assert_eq!(unverified[0]["signature"], "untrusted", "{a}");

    // The same inputs now: carried over.
    let again = release(&[]);
    assert_eq!(reused(&again), IMAGE_BOUND, "{again}");
    // --no-reuse: every gate runs.
    let full = release(&["--no-reuse"]);
    assert!(reused(&full).is_empty(), "{full}");
    assert!(gate(&full, "smoke")["evidence"]["checks"].is_array());

    // A changed policy (its digest): every gate runs.
    let policy = f.read("ci/release-policy.toml");
    f.write("ci/release-policy.toml", &format!("# reviewed\n{policy}"));
    f.commit("policy comment");
    let changed_policy = release(&[]);
    assert_eq!(changed_policy["digest"], first["digest"]);
    assert!(reused(&changed_policy).is_empty(), "{changed_policy}");
    assert_eq!(
        reused(&release(&[])),
        IMAGE_BOUND,
        "and then it carries over"
    );

    // A changed [[smoke]] list (the image's bytes stay the same): every
    // gate runs.
    f.edit(
        "images/files/image.toml",
        "expect_output = \"^ldconfig \"",
        "expect_output = \"ldconfig\"",
    );
    f.commit("another smoke command");
    let changed_smoke = release(&[]);
    assert_eq!(
        changed_smoke["digest"], first["digest"],
        "the smoke list is not in the image"
    );
    assert!(reused(&changed_smoke).is_empty(), "{changed_smoke}");

    // Issue 27, acceptance 4: a newer provenance with another source,
    // signed by a key the policy does not trust, does not change what
    // audit shows as fact.
    let trusted_rev = crate::support::git(&f.root, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    f.write("README.md", "forged origin\n");
    f.commit("a commit the intruder releases");
    let forged_rev = crate::support::git(&f.root, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let (out, _) = f.release(None, &["--signing-key", forged_key]);
    assert!(out.status.success(), "{}", show(&out));
    let out = f.ok(&["audit", first["reference"].as_str().unwrap(), "--json"]);
    let a: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(a["source"]["revision"], trusted_rev.as_str(), "{a}");
    let unverified: Vec<&str> = a["unverified_releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .collect();
    assert!(unverified.contains(&forged_rev.as_str()), "{a}");
    assert!(
        a["releases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["revision"] != forged_rev.as_str()),
        "{a}"
    );
}

/// One image of two changed: the unchanged one carries its gates over, the
/// changed one runs every gate, its reproducibility checked by a second
/// build of that image alone.
#[test]
fn one_changed_image_of_two_runs_every_gate_and_the_other_carries_them_over() {
    let (f, _keys, key) = signed_files_workspace("reuse-one", crate::verify::IMAGE);
    let other = crate::verify::IMAGE
        .replace("name = \"files\"", "name = \"other\"")
        .replace("repository = \"test/files\"", "repository = \"test/other\"");
    f.write("images/other/image.toml", &other);
    f.write("images/other/data/one.txt", "other\n");
    fs::copy(
        f.path("images/files/data/ldconfig"),
        f.path("images/other/data/ldconfig"),
    )
    .unwrap();
    f.commit("a second image");
    let release = || {
        let (out, r) = f.release(None, &["--signing-key", key.as_str()]);
        assert!(out.status.success(), "{}", show(&out));
        r
    };
    let first = release();
    let by = |r: &Value, name: &str| {
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"] == name)
            .unwrap()
            .clone()
    };
    f.write("images/other/data/one.txt", "changed\n");
    f.commit("other changed");
    let second = release();
    let (files, changed) = (by(&second, "files"), by(&second, "other"));
    assert_eq!(files["digest"], by(&first, "files")["digest"]);
    assert_eq!(reused(&files), IMAGE_BOUND, "{files}");
    assert_ne!(changed["digest"], by(&first, "other")["digest"]);
    assert!(reused(&changed).is_empty(), "{changed}");
    let repro = gate(&changed, "reproducible");
    assert_eq!(repro["state"], "passed", "{repro}");
    assert_eq!(repro["evidence"]["second"], changed["digest"], "{repro}");
}

/// Issue 25, point 7: a fresh runner (a new clone, empty target/) of a
/// commit whose image the target already proved, with the registry cache
/// warm, builds nothing: the image's input key (from git's index, no file
/// read) names the digest in the cache, the target's signed gate statement
/// for that digest names the same key, so no layer is compressed or
/// fetched, cargo does not run, no smoke container starts, and the release
/// is accepted with a new signed provenance. A dirty tree has no key and
/// builds as before.
#[test]
fn a_fresh_runner_of_a_proved_commit_builds_nothing() {
    let reg = Registry::start();
    let host = reg.host();
    let cache = format!("{host}/ci/lane-cache");
    let f = Fixture::copy_of_repo("reuse-fresh");
    let (_keys, key) = trust_a_new_key(&f);
    let ci = Creds::none().ci(&f);
    let args = [
        "hello",
        "--registry",
        &host,
        "--signing-key",
        &key,
        "--cache",
        &cache,
    ];
    let (out, r1) = f.release(Some(&ci), &args);
    assert!(out.status.success(), "{}", show(&out));
    let h1 = hello(&r1);
    assert!(h1.get("held").is_none(), "{h1}");
    let entries = reg.tags("ci/lane-cache");
    assert!(
        entries.iter().any(|t| t.starts_with("image-")),
        "the authoritative run records the image's input key: {entries:?}"
    );

    // Another runner: a new clone, empty target/, no Docker Engine.
    let runner = Fixture::clone_of(&f, "reuse-fresh-runner");
    support::git(
        &runner.root,
        &[
            "remote",
            "set-url",
            "origin",
            &format!(
                "{}/{}.git",
                support::oidc::SERVER,
                support::oidc::REPOSITORY
            ),
        ],
    );
    let ci_env = |label: &str| {
        let mut c = Creds::none();
        c.env = support::oidc::issuer().run_env(&runner, support::oidc::REPOSITORY, label);
        c.env.push((
            "DOCKER_HOST".into(),
            format!("unix://{}", runner.path("no-engine.sock").display()),
        ));
        c
    };
    let (out, r2) = runner.release(Some(&ci_env("4243")), &args);
    assert!(out.status.success(), "{}", show(&out));
    let h2 = hello(&r2);
    assert_eq!(h2["accepted"], true);
    assert_eq!(h2["held"], true, "{h2}");
    assert_eq!(h1["digest"], h2["digest"]);
    assert_eq!(h2["cache"]["misses"], 0, "{}", h2["cache"]);
    assert_eq!(
        h2["cache"]["remote_hits"], 0,
        "no layer fetched: {}",
        h2["cache"]
    );
    assert_eq!(r2["shared_cache"]["hits"], 0, "{}", r2["shared_cache"]);
    assert_eq!(r2["shared_cache"]["rejected"], serde_json::json!([]));
    assert!(
        !runner.path("target/lane-cargo").exists(),
        "cargo did not run"
    );
    let blobs: Vec<_> = fs::read_dir(runner.path("target/lane-cache/blobs/sha256"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(blobs.is_empty(), "nothing compressed or fetched: {blobs:?}");
    assert_eq!(reused(h2), IMAGE_BOUND, "{h2}");
    assert_eq!(
        gate(h2, "publish-cross-check")["evidence"]["blobs"]["bytes_uploaded"],
        0
    );
    assert_eq!(gate(h2, "publish-cross-check")["state"], "passed");
    let out = Creds::none().xtask(&runner, &["verify", h2["reference"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));

    // An untracked file: no key from git's index, so the image is built
    // (the layers from the registry cache) and its gates carried over.
    runner.write("untracked.txt", "not committed\n");
    let (out, r3) = runner.release(Some(&ci_env("4244")), &args);
    let h3 = hello(&r3);
    assert!(h3.get("held").is_none(), "{}", show(&out));
    assert_eq!(h3["digest"], h1["digest"]);
    assert!(runner.path("target/lane-cargo").exists(), "cargo ran");
}
