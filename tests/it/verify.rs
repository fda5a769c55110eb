//! The consumer side of the release lane (issue 7): signing, `verify`,
//! `promote` and `audit`.
//!
//! The pure verification core (`lane_core::verify::check`) is tested next to
//! it, with statements built and signed there. These tests run `cargo xtask
//! release` for real on a small workspace and then `verify`, `promote` and
//! `audit` on what it stored (the embedded local store; every store access
//! in the helpers below goes through the `Store` trait except
//! [`rewrite_referrers`], the attacker with write access), and the same
//! against the real Distribution registry.
//!
//! The image is files-only on scratch with one static program (the host's
//! `ldconfig`, a static-pie ELF) so that the smoke and drift gates have
//! something real to run: releases of it are accepted for real, and
//! [`Lane::break_smoke`] makes the next one rejected for real.

use std::fs;
use std::path::{Path, PathBuf};

use lane_core::evidence::{self, ANNOTATION_PREDICATE, Artifact, MEDIA_DSSE};
use lane_core::oci::canonical_json;
use lane_core::provenance;
use lane_core::signing::{self, Signer};
use lane_core::store::Store;
use serde_json::{Value, json};
use xtask::adapters::local_store::LocalStore;
use xtask::lane::verify::{self, Envelope, Evidence, NEEDS_DIGEST};

use crate::support::registry::{CI_BUILDER_ID, Creds, Registry};
use crate::support::{self, Fixture, TempDir, printed, report, show, stderr, stdout};

pub(crate) const IMAGE: &str = r#"
name = "files"
repository = "test/files"
tags = ["v1"]

[[layer]]
name = "one"
files = [
  { src = "data/one.txt", dest = "/srv/one.txt" },
  { src = "data/ldconfig", dest = "/usr/bin/ldconfig", mode = "0755" },
]

[[smoke]]
name = "version"
command = ["/usr/bin/ldconfig", "--version"]
expect_exit = 0
expect_output = "^ldconfig "
"#;

pub(crate) const REPO: &str = "test/files";

fn r(s: &str) -> lane_core::id::Repository {
    s.parse().unwrap()
}

fn dg(s: impl AsRef<str>) -> lane_core::id::Digest {
    s.as_ref().parse().unwrap()
}

fn t(s: &str) -> lane_core::id::Tag {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------
// The CLI on real releases in the local store.

struct Lane {
    f: Fixture,
    _keys: TempDir,
    key: PathBuf,
    signer: Signer,
    intruder: Signer,
}

impl Lane {
    /// A files-only workspace whose policy trusts a fresh key (made with
    /// `cargo xtask keygen`).
    fn new(label: &str) -> Lane {
        let f = Fixture::with_files(
            label,
            &[
                ("images/files/image.toml", IMAGE),
                ("images/files/data/one.txt", "one\n"),
                ("Cargo.lock", "version = 4\n"),
            ],
        );
        let keys = TempDir::new("keys");
        let out = f.ok(&["keygen", "--out", keys.path().to_str().unwrap(), "--json"]);
        let k: Value = serde_json::from_str(&out).unwrap();
        let key = PathBuf::from(k["private_key"].as_str().unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let public = fs::read_to_string(k["public_key"].as_str().unwrap()).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        fs::copy("/sbin/ldconfig", f.path("images/files/data/ldconfig"))
            .expect("the host's static /sbin/ldconfig (Debian libc-bin)");
        f.write(
            "ci/release-policy.toml",
            &format!("version = 1\n\n[signing]\ntrusted_keys = [\"\"\"\n{public}\"\"\"]\n"),
        );
        f.commit("policy trusts the lane's key");
        let signer = Signer::from_pem(&fs::read_to_string(&key).unwrap(), "key").unwrap();
        assert_eq!(signer.keyid, k["keyid"].as_str().unwrap());
        let intruder = lane_core::testing::signer(2);
        Lane {
            f,
            _keys: keys,
            key,
            signer,
            intruder,
        }
    }

    /// `release --signing-key` (or unsigned); returns whether it was
    /// accepted and the candidate digest.
    fn release(&self, signed: bool) -> (bool, String) {
        let (accepted, i) = self.release_image(signed);
        (accepted, i["digest"].as_str().unwrap().to_string())
    }

    /// A signed release that must be accepted; returns its digest and
    /// `REPO@DIGEST`.
    fn accepted_release(&self) -> (String, String) {
        let (accepted, d) = self.release(true);
        assert!(accepted, "a real accepted release");
        let reference = format!("{REPO}@{d}");
        (d, reference)
    }

    /// A signed release that must be accepted; returns the reference
    /// `release --json` printed.
    fn release_reference(&self) -> String {
        let (accepted, i) = self.release_image(true);
        assert!(accepted, "the release must be accepted");
        i["reference"].as_str().unwrap().to_string()
    }

    /// `release --signing-key` (or unsigned): accepted, and the released
    /// image's entry of the report.
    fn release_image(&self, signed: bool) -> (bool, Value) {
        let key = self.key.to_str().unwrap();
        let args: &[&str] = if signed { &["--signing-key", key] } else { &[] };
        let (out, report) = self.f.release(None, args);
        let i = &report["images"][0];
        assert_eq!(
            report["signing_key"],
            if signed {
                json!(self.signer.keyid)
            } else {
                Value::Null
            }
        );
        assert_eq!(report["signing_key_trusted"], signed);
        if !out.status.success() {
            // Shown when a test fails: why this release was rejected.
            eprintln!(
                "release rejected: {:#}\n{}",
                i["decision"]["failures"],
                stderr(&out)
            );
        }
        (out.status.success(), i.clone())
    }

    /// Changes the image and makes its smoke check fail: the next release
    /// is a rejected candidate with another digest.
    fn break_smoke(&self) {
        self.f.write("images/files/data/one.txt", "changed\n");
        self.f.write(
            "images/files/image.toml",
            &IMAGE.replace("^ldconfig ", "^this is not what it prints"),
        );
        self.f.commit("an image whose smoke check fails");
    }

    fn store(&self) -> LocalStore {
        LocalStore::new(self.f.path("target/local-registry"))
    }

    /// The digest `repo:tag` resolves to in the local store.
    fn tag(&self, repo: &str, tag: &str) -> Option<String> {
        self.store()
            .resolve_tag(&r(repo), &t(tag))
            .unwrap()
            .map(|d| d.to_string())
    }

    fn verify(&self, reference: &str) -> (bool, String) {
        let out = self
            .f
            .xtask(&["verify", reference, "--allow-local-builder"]);
        (out.status.success(), printed(&out))
    }

    fn promote(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["promote", "--allow-local-builder"];
        a.extend_from_slice(args);
        let out = self.f.xtask(&a);
        (out.status.success(), printed(&out))
    }

    /// `promote --allow-local-builder --json ARGS` that must succeed: its report.
    fn promoted(&self, args: &[&str]) -> Value {
        let mut a = vec!["promote", "--allow-local-builder", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.f.ok(&a)).unwrap()
    }

    fn audit(&self, reference: &str) -> Value {
        let out = self
            .f
            .ok(&["audit", reference, "--json", "--allow-local-builder"]);
        serde_json::from_str(&out).unwrap()
    }

    /// The DSSE envelopes attached to `digest`, as the store holds them.
    fn envelopes(&self, repo: &str, digest: &str) -> Evidence {
        verify::fetch_evidence(&mut self.store(), &r(repo), &dg(digest)).unwrap()
    }
}

fn statement(e: &Envelope) -> Value {
    serde_json::from_slice(&evidence::unbase64(e.envelope["payload"].as_str().unwrap()).unwrap())
        .unwrap()
}

fn dsse_artifact(statement: &Value, signer: Option<&Signer>, subject: &str, size: u64) -> Artifact {
    let payload = canonical_json(statement).unwrap().bytes;
    let env = canonical_json(&signing::envelope(&payload, signer)).unwrap();
    evidence::artifact(
        MEDIA_DSSE,
        MEDIA_DSSE,
        env,
        subject,
        size,
        &[(
            ANNOTATION_PREDICATE,
            statement["predicateType"].as_str().unwrap(),
        )],
    )
    .unwrap()
}

/// The attacker (or a registry admin) with write access: replaces the DSSE
/// artifacts attached to `digest` with `artifacts`, keeping the others.
/// Pushes the artifacts through `Store::attach`, then `put_index` stores the
/// new referrers index at the fallback tag.
fn rewrite_referrers(
    store: &mut dyn Store,
    digest: &str,
    artifacts: &[Artifact],
    put_index: &mut dyn FnMut(&lane_core::oci::Blob),
) {
    let keep: Vec<Value> = lane_core::store::referrers(store, &r(REPO), &dg(digest))
        .unwrap()
        .into_iter()
        .filter(|r| r["artifactType"] != MEDIA_DSSE)
        .collect();
    for a in artifacts {
        lane_core::store::attach(store, &r(REPO), &dg(digest), a).unwrap();
    }
    let mut manifests = keep;
    for r in lane_core::store::referrers(store, &r(REPO), &dg(digest)).unwrap() {
        if artifacts
            .iter()
            .any(|a| r["digest"] == a.manifest.digest.as_str())
        {
            manifests.push(r);
        }
    }
    let index = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": evidence::MEDIA_INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    put_index(&index);
    assert_eq!(
        lane_core::store::referrers(store, &r(REPO), &dg(digest)).unwrap(),
        manifests,
        "the rewritten index is in place"
    );
}

/// [`rewrite_referrers`] in the local store: the index blob is written and
/// the fallback tag of the OCI layout moved.
fn rewrite_local(lane: &Lane, digest: &str, artifacts: &[Artifact]) {
    let layout = lane.f.path("target/local-registry").join(REPO);
    let tag = dg(digest).fallback_tag().to_string();
    rewrite_referrers(&mut lane.store(), digest, artifacts, &mut |index| {
        put_local_index(&layout, &tag, index)
    });
}

/// Stores `index` in the local store layout and points the fallback tag
/// `tag` at it.
fn put_local_index(layout: &Path, tag: &str, index: &lane_core::oci::Blob) {
    fs::write(layout.join(index.digest.blob_path()), &index.bytes).unwrap();
    let path = layout.join("index.json");
    let mut top: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    for m in top["manifests"].as_array_mut().unwrap() {
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag {
            m["digest"] = json!(index.digest);
            m["size"] = json!(index.size());
        }
    }
    fs::write(&path, serde_json::to_vec(&top).unwrap()).unwrap();
}

/// [`rewrite_referrers`] in a registry: a PUT of the index at the fallback tag.
fn rewrite_registry(host: &str, digest: &str, artifacts: &[Artifact]) {
    let target: xtask::adapters::registry::RegistryTarget = host.parse().unwrap();
    let remote = xtask::adapters::registry::preflight(&target, &[]).unwrap();
    let tag = dg(digest).fallback_tag().to_string();
    let mut store = xtask::adapters::registry_store::RegistryStore::new(target, true);
    rewrite_referrers(&mut store, digest, artifacts, &mut |index| {
        let repo = remote.repo(REPO);
        let put = xtask::adapters::registry::ManifestPut {
            repo: &repo,
            reference: &tag,
            media_type: evidence::MEDIA_INDEX,
            bytes: &index.bytes,
        };
        remote
            .put_manifest_read_back(&put, "the test's index")
            .unwrap();
    });
}

/// The lane's own two envelopes of `d` (to put back), and the four
/// tamperings of acceptance point 2 with the reason verify must give.
type Case = (&'static str, Vec<Artifact>, String);
fn tamper_cases(lane: &Lane, store: &mut dyn Store, d: &str) -> (Vec<Artifact>, Vec<Case>) {
    let good = verify::fetch_evidence(store, &r(REPO), &dg(d)).unwrap();
    let size = verify::fetch_manifest(store, &r(REPO), &dg(d))
        .unwrap()
        .len() as u64;
    let by = |p: &str| {
        good.envelopes
            .iter()
            .find(|e| e.annotated_predicate.as_deref() == Some(p))
            .unwrap()
    };
    let keep = |p: &str| {
        evidence::artifact(
            MEDIA_DSSE,
            MEDIA_DSSE,
            canonical_json(&by(p).envelope).unwrap(),
            d,
            size,
            &[(ANNOTATION_PREDICATE, p)],
        )
        .unwrap()
    };
    let keep_prov = keep(provenance::SLSA_PROVENANCE_V1);
    let keep_gates = keep(provenance::TEST_RESULT_V01);
    let prov = statement(by(provenance::SLSA_PROVENANCE_V1));
    let mut rewritten = prov.clone();
    rewritten["predicate"]["buildDefinition"]["externalParameters"]["source"]["revision"] =
        json!("f".repeat(40));
    let mut elsewhere = prov.clone();
    elsewhere["subject"][0]["digest"]["sha256"] = json!("e".repeat(64));
    let failed = {
        let mut s = statement(by(provenance::TEST_RESULT_V01));
        s["predicate"]["result"] = json!("FAILED");
        s["predicate"]["failedTests"] = json!(["smoke"]);
        let passed: Vec<Value> = s["predicate"]["passedTests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| *g != "smoke")
            .cloned()
            .collect();
        s["predicate"]["passedTests"] = json!(passed);
        s
    };
    let cases = vec![
        (
            "re-signed with an untrusted key",
            vec![
                dsse_artifact(&rewritten, Some(&lane.intruder), d, size),
                keep_gates.clone(),
            ],
            format!(
                "signed by key \"{}\", which the policy does not trust",
                lane.intruder.keyid
            ),
        ),
        (
            "rewritten and unsigned",
            vec![dsse_artifact(&rewritten, None, d, size), keep_gates.clone()],
            "unsigned envelope".into(),
        ),
        (
            "subject of another digest",
            vec![
                dsse_artifact(&elsewhere, Some(&lane.signer), d, size),
                keep_gates.clone(),
            ],
            format!(
                "the statement's subject is sha256:{}, not the requested {d}",
                "e".repeat(64)
            ),
        ),
        (
            "gate statement reporting a failure",
            vec![
                keep_prov.clone(),
                dsse_artifact(&failed, Some(&lane.signer), d, size),
            ],
            "required gate smoke failed or did not run".into(),
        ),
    ];
    (vec![keep_prov, keep_gates], cases)
}

#[test]
fn rejected_release_is_signed_but_does_not_verify_and_is_not_promoted() {
    let lane = Lane::new("rejected");
    lane.break_smoke();
    let (accepted, d) = lane.release(true);
    assert!(!accepted, "the smoke check fails");
    let reference = format!("{REPO}@{d}");

    let (ok, out) = lane.verify(&reference);
    assert!(!ok);
    assert!(out.contains("NOT VERIFIED"), "{out}");
    assert!(
        out.contains("the gate statement reports result \"FAILED\""),
        "{out}"
    );
    assert!(!out.contains("no-drift"), "{out}");
    assert!(
        out.contains("required gate smoke failed or did not run"),
        "{out}"
    );
    assert!(!out.contains("unsigned"), "{out}");
    assert!(
        out.contains(&format!("signature trusted:{}", lane.signer.keyid)),
        "{out}"
    );

    let (ok, out) = lane.promote(&[&reference, "--tag", "v1"]);
    assert!(!ok);
    assert!(out.contains("refusing to promote"), "{out}");
    assert!(
        out.contains("required gate smoke failed or did not run"),
        "{out}"
    );
    assert_eq!(lane.tag(REPO, "v1"), None);

    // Without --allow-local-builder, the local builder is one more reason.
    let out = lane.f.xtask(&["verify", &reference]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("pass --allow-local-builder"));

    // Audit still answers, and says why.
    let a = lane.audit(&reference);
    assert_eq!(a["verification"]["verified"], false);
    assert_eq!(a["gate_result"], "FAILED");
    assert_eq!(a["tags"], json!([]));
    let smoke = a["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "smoke")
        .unwrap();
    assert_eq!(smoke["state"], "failed");
    assert_eq!(smoke["recorded_state"], "failed");
    assert!(
        smoke["summary"].as_str().unwrap().contains("version"),
        "{smoke}"
    );
}

/// Issue 15: what `release --json` prints is what verify, promote and audit
/// take, unmodified (local store; the registry test below does the same).
#[test]
fn the_reference_release_prints_is_what_verify_promote_and_audit_take() {
    let lane = Lane::new("reference");
    let reference = lane.release_reference();
    assert!(
        reference.starts_with(&format!("local/{REPO}@sha256:")),
        "{reference}"
    );
    let (ok, out) = lane.verify(&reference);
    assert!(ok, "{out}");
    let (ok, out) = lane.promote(&[&reference, "--tag", "prod"]);
    assert!(ok, "{out}");
    let a = lane.audit(&reference);
    assert_eq!(
        format!(
            "local/{}@{}",
            a["repository"].as_str().unwrap(),
            a["image"]["digest"].as_str().unwrap()
        ),
        reference
    );
    assert_eq!(a["verification"]["verified"], true, "{a:#}");
}

#[test]
fn unsigned_release_does_not_verify() {
    let lane = Lane::new("unsigned");
    let (accepted, d) = lane.release(false);
    assert!(accepted, "every gate passes; only the evidence is unsigned");
    let (ok, out) = lane.verify(&format!("{REPO}@{d}"));
    assert!(!ok);
    assert!(out.contains(": unsigned envelope"), "{out}");
    assert_eq!(
        out.matches(": unsigned envelope").count(),
        3,
        "provenance, gate statement and SBOM: {out}"
    );
    let (ok, out) = lane.promote(&[&format!("{REPO}@{d}"), "--tag", "prod"]);
    assert!(!ok && out.contains("unsigned envelope"), "{out}");
}

#[test]
fn accepted_release_verifies_promotes_audits_and_survives_retagging() {
    let lane = Lane::new("accepted");
    let (d, reference) = lane.accepted_release();
    // The release itself moved its tag.
    assert_eq!(lane.tag(REPO, "v1").as_deref(), Some(d.as_str()));

    // 1. verify passes; audit --json answers every question.
    let (ok, out) = lane.verify(&reference);
    assert!(ok, "{out}");
    assert!(out.contains("VERIFIED"), "{out}");

    // 3. promote moves the tag to exactly this digest.
    let p = lane.promoted(&[&reference, "--tag", "prod"]);
    assert_eq!(p["resolves_to"], d.as_str());
    assert_eq!(p["previous"], Value::Null);
    assert_eq!(lane.tag(REPO, "prod").as_deref(), Some(d.as_str()));

    let a = lane.audit(&reference);
    let revision = support::git(&lane.f.root, &["rev-parse", "HEAD"]);
    check_audit(&a, &d, REPO, revision.trim());
    assert_eq!(a["tags"], json!(["prod", "v1"]));

    // ... and the same for a promoted copy in a second repository.
    let p = lane.promoted(&[&reference, "--tag", "stable", "--to", "prod/files"]);
    assert_eq!(p["repository"], "prod/files");
    assert_eq!(p["copied"], true);
    let (ok, out) = lane.verify(&format!("prod/files@{d}"));
    assert!(ok, "{out}");
    let a2 = lane.audit("prod/files:stable");
    assert_eq!(a2["tag"]["resolves_to"], d.as_str());
    check_audit(&a2, &d, "prod/files", revision.trim());
    assert_eq!(a2["tags"], json!(["stable"]));
    // Copied by digest: the same manifest and layer bytes.
    assert_eq!(a2["image"]["layers"], a["image"]["layers"]);
    assert_eq!(
        verify::fetch_manifest(&mut lane.store(), &r("prod/files"), &dg(&d)).unwrap(),
        verify::fetch_manifest(&mut lane.store(), &r(REPO), &dg(&d)).unwrap()
    );

    // 4. Re-tagging v1 to another digest behind the lane's back: a
    // candidate the lane rejected.
    lane.break_smoke();
    let (accepted, other) = lane.release(true);
    assert!(!accepted);
    assert_ne!(other, d);
    assert_eq!(
        lane.tag(REPO, "v1").as_deref(),
        Some(d.as_str()),
        "a rejected release moves no tag"
    );
    lane.store().tag(&r(REPO), &dg(&other), &t("v1")).unwrap(); // not through promote
    let drifted = lane.audit(&format!("{REPO}:v1"));
    assert_eq!(drifted["tag"]["resolves_to"], other.as_str());
    assert_eq!(drifted["image"]["digest"], other.as_str());
    assert_eq!(drifted["verification"]["verified"], false);
    let human = lane
        .f
        .ok(&["audit", &format!("{REPO}:v1"), "--allow-local-builder"]);
    assert!(
        human.contains(&format!("tag {REPO}:v1 resolves NOW to {other}")),
        "{human}"
    );
    assert!(human.contains("NOT VERIFIED"), "{human}");
    assert!(
        drifted["verification"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("required gate smoke failed")),
        "{drifted:#}"
    );
    let (ok, out) = lane.verify(&reference);
    assert!(ok, "the original digest still verifies: {out}");
    assert_eq!(lane.audit(&reference)["tags"], json!(["prod"]));

    // Promote moves it back, and says where it was.
    let p = lane.promoted(&[&reference, "--tag", "v1"]);
    assert_eq!(p["previous"], other.as_str());
    assert_eq!(
        lane.audit(&format!("{REPO}:v1"))["tag"]["resolves_to"],
        d.as_str()
    );
}

fn check_audit(a: &Value, d: &str, repo: &str, revision: &str) {
    let nonempty = |ptr: &str| {
        let v = a.pointer(ptr).unwrap_or(&Value::Null);
        assert!(
            !(v.is_null() || v == "" || v == &json!([])),
            "audit field {ptr} is empty in {a:#}"
        );
    };
    for ptr in [
        "/image/name",
        "/image/subject",
        "/image/digest",
        "/image/config",
        "/image/layers/0/digest",
        "/image/base",
        "/source/repository",
        "/source/revision",
        "/source/clean",
        "/builder/id",
        "/builder/invocation",
        "/builder/startedOn",
        "/builder/finishedOn",
        "/release_tags",
        "/gates/0/gate",
        "/gate_result",
        "/verification/verified",
        "/verification/statements/0/signature",
    ] {
        nonempty(ptr);
    }
    assert_eq!(a["repository"], repo);
    assert_eq!(a["image"]["digest"], d);
    assert_eq!(a["image"]["name"], "files");
    assert_eq!(a["source"]["revision"], revision);
    assert_eq!(a["source"]["clean"], true);
    assert_eq!(a["builder"]["id"], lane_core::provenance::LOCAL_BUILDER_ID);
    assert_eq!(a["gate_result"], "PASSED");
    assert_eq!(a["verification"]["verified"], true, "{a:#}");
    assert_eq!(a["verification"]["reasons"], json!([]));
    for g in a["gates"].as_array().unwrap() {
        // Not required for the local store; recorded as information.
        let expected = if g["gate"] == "authoritative-builder" {
            "failed"
        } else {
            "passed"
        };
        assert_eq!(g["state"], expected, "{g}");
    }
    for gate in ["smoke", "no-drift", "reproducible", "publish-cross-check"] {
        assert!(
            a["gates"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["gate"] == gate),
            "{gate} missing from {a:#}"
        );
    }
}

#[test]
fn tampered_evidence_fails_verify_and_promote() {
    let lane = Lane::new("tamper");
    let (d, reference) = lane.accepted_release();
    assert!(lane.verify(&reference).0, "the untampered release verifies");
    let (lanes_own, cases) = tamper_cases(&lane, &mut lane.store(), &d);
    for (what, artifacts, reason) in cases {
        rewrite_local(&lane, &d, &artifacts);
        let (ok, out) = lane.verify(&reference);
        assert!(!ok, "{what}: verify passed:\n{out}");
        assert!(out.contains(&reason), "{what}: no {reason:?} in:\n{out}");
        let (ok, out) = lane.promote(&[&reference, "--tag", "prod"]);
        assert!(!ok, "{what}: promote went ahead:\n{out}");
        assert!(
            out.contains("refusing to promote") && out.contains(&reason),
            "{what}: {out}"
        );
        assert_eq!(lane.tag(REPO, "prod"), None, "{what}");
    }
    // Putting the lane's own evidence back makes it verify again.
    rewrite_local(&lane, &d, &lanes_own);
    assert!(lane.verify(&reference).0);
}

#[test]
fn referrers_index_naming_a_path_is_refused_and_nothing_outside_the_store_is_read() {
    let lane = Lane::new("traversal");
    let (d, reference) = lane.accepted_release();
    assert!(lane.verify(&reference).0, "the untampered release verifies");
    // Where `blobs/sha256/../../x` of the repository would lead: a file an
    // unparsed digest would read.
    let layout = lane.f.path("target/local-registry").join(REPO);
    fs::write(layout.join("x"), b"{}").unwrap();
    // A referrers index (at the fallback tag) that names that path.
    let tag = dg(&d).fallback_tag().to_string();
    let mut manifests = lane_core::store::referrers(&mut lane.store(), &r(REPO), &dg(&d)).unwrap();
    manifests.push(json!({
        "mediaType": lane_core::evidence::MEDIA_MANIFEST,
        "digest": "sha256:../../x",
        "size": 2,
        "artifactType": MEDIA_DSSE,
    }));
    let index = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": evidence::MEDIA_INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    put_local_index(&layout, &tag, &index);

    let (ok, out) = lane.verify(&reference);
    assert!(
        !ok,
        "verify passed with a path in the referrers index:\n{out}"
    );
    assert!(
        out.contains("sha256:../../x") && out.contains("is not a digest"),
        "the Digest parser did not refuse it:\n{out}"
    );
    let (ok, out) = lane.promote(&[&reference, "--tag", "prod"]);
    assert!(!ok, "promote went ahead:\n{out}");
    assert_eq!(lane.tag(REPO, "prod"), None);
}

#[test]
fn promote_and_publish_accept_and_refuse_the_same_tags() {
    let lane = Lane::new("same-tags");
    let (_, reference) = lane.accepted_release();
    for bad in [
        "sha256-abc",
        ".hidden",
        "-dash",
        "a/b",
        "a:b",
        &"x".repeat(129),
    ] {
        let flag = format!("--tag={bad}");
        let publish = lane.f.fails(&["publish", &flag]);
        let (ok, promote) = lane.promote(&[&reference, &flag]);
        assert!(!ok, "promote accepted {bad:?}:\n{promote}");
        let reason = |out: &str| {
            out.lines()
                .find(|l| l.contains("is not a valid tag") || l.contains("referrers fallback tag"))
                .map(|l| l[l.find('"').unwrap_or(0)..].to_string())
        };
        assert!(reason(&publish).is_some(), "publish: {publish}");
        assert_eq!(
            reason(&publish),
            reason(&promote),
            "{bad:?}: {publish} / {promote}"
        );
    }
    for good in ["v1.2.3", "_x", "Prod-2"] {
        lane.f.ok(&["publish", "--tag", good]);
        let (ok, out) = lane.promote(&[&reference, "--tag", good]);
        assert!(ok, "promote refused {good:?}:\n{out}");
    }
}

#[test]
fn tag_only_references_are_refused_where_a_digest_is_needed() {
    let lane = Lane::new("tag-only");
    let (d, _) = lane.accepted_release();
    let expected = format!("error: {NEEDS_DIGEST}\n");
    for args in [
        vec!["verify", "test/files:v1"],
        vec!["verify", "test/files"],
        vec!["promote", "test/files:v1", "--tag", "prod"],
        vec![
            "promote",
            "test/files:latest",
            "--tag",
            "prod",
            "--to",
            "prod/files",
        ],
    ] {
        assert_eq!(lane.f.fails(&args), expected, "{args:?}");
    }
    assert_eq!(
        NEEDS_DIGEST,
        "verify needs a digest: REPO@sha256:...; `cargo xtask audit` can resolve a tag for you"
    );
    // audit resolves a tag (here, one that does not exist) or takes a digest.
    let e = lane.f.fails(&["audit", "test/files:nope"]);
    assert!(e.contains("tag test/files:nope does not exist"), "{e}");
    assert!(e.contains("tags of test/files: v1"), "{e}");
    assert_eq!(
        lane.audit("test/files:v1")["tag"]["resolves_to"],
        d.as_str()
    );
    assert_eq!(
        lane.audit(&format!("{REPO}@{d}"))["image"]["digest"],
        d.as_str()
    );
    // Malformed digests and repository names are refused, not looked up.
    let e = lane.f.fails(&["verify", "test/files@sha256:abc"]);
    assert!(e.contains("is not a digest"), "{e}");
    let e = lane.f.fails(&[
        "promote",
        &format!("{REPO}@{d}"),
        "--tag",
        "x",
        "--to",
        "../escape",
    ]);
    assert!(e.contains("not a valid repository name"), "{e}");
}

#[test]
fn signing_key_comes_from_the_environment_and_bad_keys_are_refused() {
    let lane = Lane::new("key-env");
    let pem = fs::read_to_string(&lane.key).unwrap();
    let with_env = |k: &str, v: &str| {
        let mut c = Creds::none();
        c.env.push((k.into(), v.into()));
        c
    };
    let (_, r) = lane
        .f
        .release(Some(&with_env("LANE_SIGNING_KEY", &pem)), &[]);
    assert_eq!(r["signing_key"], lane.signer.keyid.as_str());
    let (_, r) = lane.f.release(
        Some(&with_env(
            "LANE_SIGNING_KEY_FILE",
            lane.key.to_str().unwrap(),
        )),
        &[],
    );
    assert_eq!(r["signing_key"], lane.signer.keyid.as_str());
    let out = with_env("LANE_SIGNING_KEY", "not a key").xtask(&lane.f, &["release"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("$LANE_SIGNING_KEY is not a PKCS#8 PEM ECDSA P-256 private key"),
        "{e}"
    );
    assert!(
        !e.contains("not a key"),
        "the key text is never echoed: {e}"
    );
    // keygen never overwrites.
    let dir = lane.key.parent().unwrap().to_str().unwrap().to_string();
    let e = lane.f.fails(&["keygen", "--out", &dir]);
    assert!(e.contains("already exists; keygen never overwrites"), "{e}");
}

/// Standard tooling agrees: openssl checks the lane's DSSE signature over the
/// PAE, a key made by openssl signs releases, and the keyid is the sha256 of
/// the SPKI DER as openssl writes it.
#[test]
fn openssl_checks_the_signatures_and_makes_usable_keys() {
    let lane = Lane::new("openssl");
    let dir = TempDir::new("openssl");
    let p = |n: &str| dir.path().join(n);
    let openssl =
        |args: &[&str]| support::stdout_of(std::process::Command::new("openssl").args(args));
    let key = p("ossl.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        p("ossl.pub").to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        p("ossl.der").to_str().unwrap(),
    ]);
    let signer = Signer::from_pem(&fs::read_to_string(&key).unwrap(), "openssl key").unwrap();
    let der_hash = support::sha256_hex_of_file(&p("ossl.der"));
    assert_eq!(format!("sha256:{}", signer.keyid), der_hash);

    // The lane's envelopes, signed with that key, checked by openssl.
    let (_, r) = lane
        .f
        .release(None, &["--signing-key", key.to_str().unwrap()]);
    assert_eq!(r["signing_key"], signer.keyid.as_str());
    assert_eq!(
        r["signing_key_trusted"], false,
        "the policy trusts only the lane's key"
    );
    let human = lane
        .f
        .xtask(&["release", "--signing-key", key.to_str().unwrap()]);
    let human = stdout(&human);
    assert!(
        human.contains("which ci/release-policy.toml does not trust: verify will refuse it"),
        "{human}"
    );
    let d = r["images"][0]["digest"].as_str().unwrap().to_string();
    let ev = lane.envelopes(REPO, &d);
    assert!(ev.envelopes.len() >= 2, "{ev:?}");
    for (i, e) in ev.envelopes.iter().enumerate() {
        let payload = evidence::unbase64(e.envelope["payload"].as_str().unwrap()).unwrap();
        let pae = evidence::pae(e.envelope["payloadType"].as_str().unwrap(), &payload);
        let sig = &e.envelope["signatures"][0];
        assert_eq!(sig["keyid"], signer.keyid.as_str());
        let (m, s) = (p(&format!("pae{i}")), p(&format!("sig{i}")));
        fs::write(&m, &pae).unwrap();
        fs::write(
            &s,
            evidence::unbase64(sig["sig"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let ok = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            p("ossl.pub").to_str().unwrap(),
            "-signature",
            s.to_str().unwrap(),
            m.to_str().unwrap(),
        ]);
        assert_eq!(ok.trim(), "Verified OK");
    }
}

// ---------------------------------------------------------------------------
// The same against the real Distribution registry (no referrers API: the
// evidence is found through the sha256-<hex> fallback tag).

#[test]
fn against_the_registry_a_ci_release_verifies_promotes_audits_and_tampering_fails() {
    let reg = Registry::start();
    let host = reg.host();
    let lane = Lane::new("registry");
    let ci = Creds::none().ci(&lane.f);
    let plain = Creds::none();
    let key = lane.key.to_str().unwrap().to_string();
    let x = |creds: &Creds, args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--registry", &host]);
        creds.xtask(&lane.f, &a)
    };

    let release = || {
        lane.f
            .release(Some(&ci), &["--signing-key", &key, "--registry", &host])
    };
    let (out, r) = release();
    assert!(out.status.success(), "{}", show(&out));
    let d = r["images"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(reg.tag_digest(REPO, "v1").as_deref(), Some(d.as_str()));
    let reference = format!("{REPO}@{d}");
    // What release printed (HOST:PORT/REPO@sha256:...) is what verify and
    // audit take as it is, with or without --registry.
    let printed = r["images"][0]["reference"].as_str().unwrap().to_string();
    assert_eq!(printed, format!("{host}/{REPO}@{d}"));
    let out = plain.xtask(&lane.f, &["verify", &printed]);
    assert!(out.status.success(), "{}", show(&out));
    let out = x(&plain, &["audit", &printed, "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = plain.xtask(&lane.f, &["promote", &printed, "--tag", "stable"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(reg.tag_digest(REPO, "stable").as_deref(), Some(d.as_str()));

    // verify, with no flag: a CI builder, evidence through the fallback tag.
    let out = x(&plain, &["verify", &reference]);
    assert!(out.status.success(), "{}", show(&out));
    // promote into a second repository; skopeo reads the tag back.
    let out = x(
        &plain,
        &[
            "promote",
            &reference,
            "--tag",
            "prod",
            "--to",
            "prod/files",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        reg.tag_digest("prod/files", "prod").as_deref(),
        Some(d.as_str())
    );
    let out = x(&plain, &["verify", &format!("prod/files@{d}")]);
    assert!(out.status.success(), "{}", show(&out));
    let out = x(&plain, &["audit", "prod/files:prod", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let a = report(&out);
    assert_eq!(a["tag"]["resolves_to"], d.as_str());
    assert_eq!(a["image"]["digest"], d.as_str());
    assert_eq!(a["image"]["subject"], format!("{host}/{REPO}").as_str());
    assert_eq!(a["builder"]["id"], CI_BUILDER_ID);
    assert_eq!(a["builder"]["authoritative"], true);
    assert_eq!(
        a["builder"]["invocation"],
        "https://ci.example.com/platform/release-lane/actions/runs/4242/attempts/1"
    );
    assert_eq!(a["source"]["clean"], true);
    assert_eq!(a["tags"], json!(["prod"]));
    assert_eq!(a["gate_result"], "PASSED");
    assert!(
        a["gates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["gate"] == "authoritative-builder" && g["state"] == "passed"),
        "{a:#}"
    );
    assert_eq!(a["verification"]["verified"], true, "{a:#}");

    // --allow-local-builder does not loosen anything for CI evidence (and a
    // local builder is never trusted for a registry: see the core tests).
    let out = x(&plain, &["verify", &reference, "--allow-local-builder"]);
    assert!(
        out.status.success(),
        "the flag changes nothing for CI evidence"
    );

    // Tag-only references.
    let out = x(&plain, &["verify", &format!("{REPO}:v1")]);
    assert_eq!(stderr(&out), format!("error: {NEEDS_DIGEST}\n"));
    let out = x(&plain, &["promote", &format!("{REPO}:v1"), "--tag", "prod"]);
    assert_eq!(stderr(&out), format!("error: {NEEDS_DIGEST}\n"));

    // Re-tagging behind the lane's back: skopeo points v1 at a rejected
    // candidate. audit of the tag shows it; the release digest still verifies.
    lane.break_smoke();
    let (out, r) = release();
    assert!(!out.status.success(), "{}", show(&out));
    let other = r["images"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(reg.tag_digest(REPO, "v1").as_deref(), Some(d.as_str()));
    let copy = support::run(std::process::Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{host}/{REPO}@{other}"),
        &format!("docker://{host}/{REPO}:v1"),
    ]));
    assert!(copy.status.success(), "{}", show(&copy));
    assert_eq!(reg.tag_digest(REPO, "v1").as_deref(), Some(other.as_str()));
    let out = x(&plain, &["audit", &format!("{REPO}:v1"), "--json"]);
    let a = report(&out);
    assert_eq!(a["tag"]["resolves_to"], other.as_str());
    assert_eq!(a["verification"]["verified"], false);
    let out = x(&plain, &["verify", &reference]);
    assert!(out.status.success(), "{}", show(&out));
    let out = x(
        &plain,
        &["promote", &format!("{REPO}@{other}"), "--tag", "v1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("required gate smoke failed"),
        "{}",
        show(&out)
    );

    // Acceptance 2 through the registry: the referrers index at the
    // fallback tag rewritten by someone with write access.
    let (lanes_own, cases) = tamper_cases(
        &lane,
        &mut xtask::adapters::registry_store::RegistryStore::new(host.parse().unwrap(), true),
        &d,
    );
    for (what, artifacts, reason) in cases {
        rewrite_registry(&host, &d, &artifacts);
        let out = x(&plain, &["verify", &reference]);
        assert!(!out.status.success(), "{what}: {}", show(&out));
        assert!(
            stdout(&out).contains(&reason),
            "{what}: no {reason:?} in {}",
            show(&out)
        );
        let out = x(&plain, &["promote", &reference, "--tag", "again"]);
        assert!(!out.status.success(), "{what}: {}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("refusing to promote") && err.contains(&reason),
            "{what}: {err}"
        );
        assert_eq!(reg.tag_digest(REPO, "again"), None, "{what}");
    }
    rewrite_registry(&host, &d, &lanes_own);
    let out = x(&plain, &["verify", &reference]);
    assert!(out.status.success(), "{}", show(&out));
}
