//! The CI identity as a verified fact (issue 14), against a real OIDC
//! issuer on 127.0.0.1 (tests/support/oidc.rs: discovery document, JWKS,
//! GitHub's token endpoint format, keys it generates) and the real
//! Distribution registry. The lane's verifier is the one under test; the
//! issuer signs with p256 (ES256) or the openssl command line (RS256).
//!
//! The workspace is files-only (one static program, the host's ldconfig),
//! so a whole release takes seconds.

use std::fs;
use std::process::Output;

use crate::support::oidc::{Alg, Fault, Issuer, REPOSITORY};
use crate::support::registry::{Creds, Registry, files_under, http, sha256_of};
use crate::support::show;
use crate::support::{Fixture, TempDir};
use serde_json::Value;

// The files-only image and repository of the verify tests.
use crate::verify::{IMAGE, REPO};

/// A files-only workspace whose policy trusts a fresh signing key.
struct Lane {
    f: Fixture,
    _keys: TempDir,
    key: String,
}

fn lane(label: &str) -> Lane {
    let (f, keys, key) = crate::support::signed_files_workspace(label, IMAGE);
    Lane {
        f,
        _keys: keys,
        key,
    }
}

impl Lane {
    fn release(&self, c: &Creds, registry: Option<&str>) -> Output {
        let mut args = vec!["release", "--json", "--signing-key", &self.key];
        if let Some(r) = registry {
            args.extend(["--registry", r]);
        }
        c.xtask(&self.f, &args)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Nothing was built, published, tagged or recorded: no layout, no release
/// record, no repository in the registry.
fn nothing_happened(f: &Fixture, reg: &Registry, what: &str) {
    assert!(
        !f.path("target/images").exists(),
        "{what}: something was built"
    );
    assert!(
        !f.path("target/releases").exists(),
        "{what}: a release record was written"
    );
    let (status, _, body) = http(reg.port, "GET", "/v2/_catalog", &[]).unwrap();
    assert_eq!(status, 200);
    let catalog: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!([]),
        "{what}: something was pushed"
    );
}

/// Runs a registry release of `lane` with `c` and checks it stopped in
/// preflight with every `want` in its error; returns the error output.
fn refused_in_preflight(
    lane: &Lane,
    c: &Creds,
    reg: &Registry,
    what: &str,
    want: &[&str],
) -> String {
    let out = lane.release(c, Some(&reg.host()));
    assert!(!out.status.success(), "{what}: {}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("error: preflight: CI identity: "),
        "{what}: not refused by the identity preflight:\n{}",
        show(&out)
    );
    for w in want {
        assert!(err.contains(w), "{what}: no {w:?} in:\n{err}");
    }
    assert!(
        out.stdout.is_empty(),
        "{what}: no report, nothing claims authority"
    );
    nothing_happened(&lane.f, reg, what);
    err
}

/// The provenance attached to `digest`, read from the registry.
fn provenance(reg: &Registry, digest: &str) -> Value {
    let mut store =
        xtask::adapters::registry_store::RegistryStore::new(reg.host().parse().unwrap(), true);
    let ev = xtask::lane::verify::fetch_evidence(
        &mut store,
        &REPO.parse().unwrap(),
        &digest.parse().unwrap(),
    )
    .unwrap();
    ev.envelopes
        .iter()
        .map(|e| {
            serde_json::from_slice::<Value>(
                &lane_core::evidence::unbase64(e.envelope["payload"].as_str().unwrap()).unwrap(),
            )
            .unwrap()
        })
        .find(|s| s["predicateType"] == lane_core::provenance::SLSA_PROVENANCE_V1)
        .expect("a provenance statement is attached")
}

/// Acceptance 1 and 6: a run with a valid token whose claims match is
/// authoritative; the provenance names the workflow identity and the
/// verified claims; `verify` accepts it; the ID token and the request
/// token appear in no output, file, record or artifact.
#[test]
fn a_verified_ci_run_is_accepted_verify_accepts_it_and_the_token_is_nowhere() {
    let issuer = Issuer::start(Alg::ES256);
    let reg = Registry::start();
    let lane = lane("identity-ok");
    let c = issuer.ci(Creds::none(), &lane.f);
    let out = lane.release(&c, Some(&reg.host()));
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let workflow = Issuer::workflow(REPOSITORY);
    assert_eq!(report["builder"]["id"], workflow.as_str());
    assert_eq!(report["builder"]["authoritative"], true);
    assert_eq!(
        report["builder"]["invocation_id"],
        format!(
            "{}/{REPOSITORY}/actions/runs/4242/attempts/1",
            crate::support::oidc::SERVER
        )
    );
    let image = &report["images"][0];
    assert_eq!(image["accepted"], true);
    let digest = image["digest"].as_str().unwrap();
    assert_eq!(reg.tag_digest(REPO, "v1").as_deref(), Some(digest));

    let prov = provenance(&reg, digest);
    assert_eq!(
        prov["predicate"]["runDetails"]["builder"]["id"],
        workflow.as_str()
    );
    let identity = &prov["predicate"]["buildDefinition"]["internalParameters"]["identity"];
    let head = crate::support::git(&lane.f.root, &["rev-parse", "HEAD"]);
    assert_eq!(identity["issuer"], issuer.url());
    assert_eq!(identity["audience"], crate::support::oidc::AUDIENCE);
    assert_eq!(identity["claims"]["sha"], head.trim());
    assert_eq!(identity["claims"]["repository"], REPOSITORY);
    assert_eq!(identity["claims"]["ref"], "refs/heads/main");
    assert_eq!(
        identity["claims"]["job_workflow_ref"],
        format!("{REPOSITORY}/.github/workflows/release.yml@refs/heads/main")
    );
    assert_eq!(identity["key"]["alg"], "ES256");
    let hex = |v: &Value| format!("sha256:{}", v.as_str().unwrap());
    assert_eq!(
        hex(&identity["key"]["digest"]["sha256"]),
        issuer.es_thumbprint(),
        "the RFC 7638 thumbprint of the issuer's key"
    );
    let tokens = issuer.issued();
    assert_eq!(tokens.len(), 1, "one token for one run");
    assert_eq!(
        hex(&identity["token"]["digest"]["sha256"]),
        sha256_of(tokens[0].as_bytes())
    );
    // The authoritative-builder gate passed on the verified identity.
    let gate = image["decision"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "authoritative-builder")
        .unwrap();
    assert_eq!(gate["state"], "passed", "{gate}");
    assert_eq!(gate["evidence"]["identity"]["claims"]["sha"], head.trim());

    // verify, by anyone (no CI variables), with the committed policy.
    let plain = Creds::none();
    let reference = image["reference"].as_str().unwrap();
    let verified = plain.xtask(&lane.f, &["verify", reference]);
    assert!(verified.status.success(), "{}", show(&verified));
    let audit = plain.xtask(&lane.f, &["audit", reference, "--json"]);
    assert!(audit.status.success(), "{}", show(&audit));
    let a: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(a["builder"]["authoritative"], true);
    assert_eq!(a["builder"]["identity"]["claims"]["sha"], head.trim());

    // Acceptance 6: the token and the request token are nowhere: not in
    // any output, any file of the workspace (records, layouts, caches),
    // any file of the registry's storage (every pushed blob), any statement.
    let mut secrets = tokens.clone();
    secrets.extend(issuer.request_tokens());
    assert_eq!(secrets.len(), 2);
    let outputs = [text(&out), text(&verified), text(&audit)];
    let mut files = files_under(&lane.f.root);
    files.extend(files_under(&reg.storage()));
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("releases")),
        "the release record is among the files searched"
    );
    for secret in &secrets {
        for o in &outputs {
            assert!(!o.contains(secret.as_str()), "a secret in the output");
        }
        for file in &files {
            let bytes = fs::read(file).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret in {}",
                file.display()
            );
        }
        assert!(!prov.to_string().contains(secret.as_str()));
    }
}

/// Acceptance 5: evidence signed by a trusted key is still refused when
/// the policy does not trust its builder identity: another workflow, an
/// empty trusted list, another issuer.
#[test]
fn verify_refuses_a_builder_the_policy_does_not_trust_even_signed_by_a_trusted_key() {
    let issuer = Issuer::start(Alg::ES256);
    let reg = Registry::start();
    let lane = lane("identity-untrusted");
    let c = issuer.ci(Creds::none(), &lane.f);
    let out = lane.release(&c, Some(&reg.host()));
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference = report["images"][0]["reference"].as_str().unwrap();
    let keyid = report["signing_key"].as_str().unwrap();
    let plain = Creds::none();
    let verify = || plain.xtask(&lane.f, &["verify", reference]);
    assert!(verify().status.success());

    let workflow = Issuer::workflow(REPOSITORY);
    let other = format!(
        "{}/{REPOSITORY}/.github/workflows/other.yml@refs/heads/main",
        crate::support::oidc::SERVER
    );
    issuer.trust(&lane.f, REPOSITORY, std::slice::from_ref(&other));
    let out = verify();
    assert!(!out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("signature trusted:{keyid}")),
        "the signature itself is trusted: {stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "builder \"{workflow}\" is not trusted: it matches no entry of [builder] trusted"
        )),
        "{stdout}"
    );

    issuer.trust(&lane.f, REPOSITORY, &[]);
    let out = verify();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trusts no CI identity"),
        "{}",
        show(&out)
    );

    // The same workflow trusted, but tokens of another issuer.
    let other_issuer = Issuer::start(Alg::ES256);
    other_issuer.trust(&lane.f, REPOSITORY, std::slice::from_ref(&workflow));
    let out = verify();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "the builder identity was issued by \"{}\", but ci/release-policy.toml trusts tokens of \"{}\"",
            issuer.url(),
            other_issuer.url()
        )),
        "{}",
        show(&out)
    );
}

/// Acceptance 3: GitHub's variables without a token (the spoofed laptop)
/// are not authoritative: the registry release stops in preflight. Into
/// the local store the run is the local builder, as any local run.
#[test]
fn the_spoofed_laptop_is_not_authoritative() {
    let issuer = Issuer::start(Alg::ES256);
    let reg = Registry::start();
    let lane = lane("identity-spoofed");
    issuer.trust(&lane.f, REPOSITORY, &[Issuer::workflow(REPOSITORY)]);
    let mut spoofed = Creds::none();
    spoofed.env = crate::support::oidc::spoofed_env(REPOSITORY);
    refused_in_preflight(
        &lane,
        &spoofed,
        &reg,
        "GITHUB_* without a token",
        &[
            "GITHUB_ACTIONS=true",
            "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not both set",
            "permissions: id-token: write",
            "from a fork",
        ],
    );
    // Half of the token variables is no better.
    let mut half = Creds::none();
    half.env = issuer.run_env(&lane.f, REPOSITORY, "1");
    half.env
        .retain(|(k, _)| k != "ACTIONS_ID_TOKEN_REQUEST_TOKEN");
    refused_in_preflight(
        &lane,
        &half,
        &reg,
        "no request token",
        &["permissions: id-token: write"],
    );
    assert!(issuer.issued().is_empty(), "no token was ever issued");

    // The local store: accepted, as the local builder, with a warning.
    let out = lane.release(&spoofed, None);
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["builder"]["id"],
        lane_core::provenance::LOCAL_BUILDER_ID
    );
    assert_eq!(report["builder"]["authoritative"], false);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: preflight: CI identity not verified"),
        "{}",
        show(&out)
    );
    let gate = report["images"][0]["decision"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "authoritative-builder")
        .unwrap()
        .clone();
    assert_eq!(gate["state"], "failed", "information only here: {gate}");
}

/// Acceptance 2: each bootstrap failure stops the release in preflight,
/// before anything is built or pushed, with its own message naming the
/// fix; nothing is recorded, so no evidence claims authority.
#[test]
fn each_bootstrap_failure_stops_the_release_in_preflight_with_its_fix() {
    let issuer = Issuer::start(Alg::ES256);
    let reg = Registry::start();
    let lane = lane("identity-bootstrap");
    let c = issuer.ci(Creds::none(), &lane.f);
    let cases: Vec<(Fault, Vec<&str>)> = vec![
        (
            Fault::HugeJwks,
            vec![
                "the issuer's JWKS (jwks_uri) at",
                "is more than 1048576 bytes",
            ],
        ),
        (
            Fault::DiscoveryRedirectsAway,
            vec![
                "the issuer redirected to http://127.0.0.2:",
                "another host over plain http: refused",
            ],
        ),
        (
            Fault::Refuse(403),
            vec![
                "refused the ID-token request for audience \"release-lane\" with 403 Forbidden",
                "permissions: id-token: write",
            ],
        ),
        (
            Fault::Refuse(500),
            vec!["500 Internal Server Error", "run the job again"],
        ),
        (
            Fault::Discovery(503),
            vec![
                "the issuer's discovery document at",
                "/.well-known/openid-configuration answered 503",
                "check [builder] issuer",
            ],
        ),
        (
            Fault::DiscoveryNamesOther,
            vec![
                "/.well-known/openid-configuration names issuer \"https://issuer.example.com\", not",
                "[builder] issuer in ci/release-policy.toml must be the issuer's exact URL",
            ],
        ),
        (
            Fault::JwksUnreachable,
            vec![
                "cannot reach the issuer's JWKS (jwks_uri) at",
                "check [builder] issuer",
            ],
        ),
        (
            Fault::WrongIssuer,
            vec![
                "the token's issuer is \"https://issuer.example.com\"",
                "[builder] issuer",
            ],
        ),
        (
            Fault::WrongAudience,
            vec!["the token's audience is [\"someone-else\"], not \"release-lane\""],
        ),
        (
            Fault::Expired,
            vec![
                "the token expired at",
                "s before this machine's clock",
                "(NTP)",
            ],
        ),
        (
            Fault::NotYetValid,
            vec![
                "the token is not valid before",
                "this machine's clock is behind the issuer's by about",
                "(NTP)",
            ],
        ),
        (
            Fault::Claim(
                "job_workflow_ref",
                format!("{REPOSITORY}/.github/workflows/other.yml@refs/heads/main"),
            ),
            vec![
                "workflow https://ci.example.com/platform/release-lane/.github/workflows/other.yml@refs/heads/main is not trusted",
                "matches no entry of [builder] trusted in ci/release-policy.toml",
            ],
        ),
    ];
    let mut errors = Vec::new();
    for (fault, want) in cases {
        issuer.set_fault(fault.clone());
        errors.push(refused_in_preflight(
            &lane,
            &c,
            &reg,
            &format!("{fault:?}"),
            &want,
        ));
    }
    // Each failure has its own message.
    let mut distinct = errors.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), errors.len(), "{errors:#?}");

    // Not GitHub Actions' runner: no GITHUB_SERVER_URL.
    issuer.set_fault(Fault::None);
    let mut no_server = Creds::none();
    no_server.env = c.env.clone();
    no_server.env.retain(|(k, _)| k != "GITHUB_SERVER_URL");
    errors.push(refused_in_preflight(
        &lane,
        &no_server,
        &reg,
        "no GITHUB_SERVER_URL",
        &["GITHUB_SERVER_URL is not set"],
    ));

    // The workflow's audience (LANE_OIDC_AUDIENCE) is not the policy's.
    let mut other_audience = Creds::none();
    other_audience.env = c.env.clone();
    other_audience
        .env
        .push(("LANE_OIDC_AUDIENCE".into(), "another-lane".into()));
    errors.push(refused_in_preflight(
        &lane,
        &other_audience,
        &reg,
        "the workflow's audience",
        &[
            "the workflow passes audience \"another-lane\" (LANE_OIDC_AUDIENCE) but ci/release-policy.toml requires \"release-lane\"",
        ],
    ));

    // An empty trusted list trusts no CI identity, and says what to add.
    issuer.trust(&lane.f, REPOSITORY, &[]);
    refused_in_preflight(
        &lane,
        &c,
        &reg,
        "empty trusted list",
        &[
            "trusts no CI identity ([builder] trusted is empty)",
            &format!(
                "add \"{}\" to [builder] trusted",
                Issuer::workflow(REPOSITORY)
            ),
        ],
    );
    for secret in issuer.issued().iter().chain(issuer.request_tokens().iter()) {
        for e in &errors {
            assert!(!e.contains(secret.as_str()), "a secret in an error");
        }
    }
}

/// Acceptance 4: a token signed by a key the issuer's JWKS does not list,
/// a token with `alg: none`, and tokens whose repository, sha or ref
/// differ from the checkout are each refused.
#[test]
fn forged_and_foreign_tokens_are_refused() {
    let issuer = Issuer::start(Alg::ES256);
    let reg = Registry::start();
    let lane = lane("identity-forged");
    let c = issuer.ci(Creds::none(), &lane.f);
    let head = crate::support::git(&lane.f.root, &["rev-parse", "HEAD"]);
    let other_sha = "f".repeat(40);
    let cases: Vec<(Fault, Vec<String>)> = vec![
        (
            Fault::UnknownKid,
            vec![
                "the token is signed with key \"lane-test-rogue\", which the issuer's JWKS at".into(),
                "does not list (it lists lane-test-es256)".into(),
            ],
        ),
        (
            Fault::BadSignature,
            vec!["the token's signature does not verify with key \"lane-test-es256\"".into()],
        ),
        (
            Fault::AlgNone,
            vec![
                "the token is unsigned (alg \"none\"".into(),
                "only RS256 and ES256".into(),
            ],
        ),
        (
            Fault::Claim("repository", "fork/release-lane".into()),
            vec![
                "the token's repository \"fork/release-lane\" is not the checkout's \"platform/release-lane\"".into(),
            ],
        ),
        (
            Fault::Claim("sha", other_sha.clone()),
            vec![format!(
                "the token's sha \"{other_sha}\" is not the checkout's HEAD {}",
                head.trim()
            )],
        ),
        (
            Fault::Claim("ref", "refs/heads/evil".into()),
            vec![
                "the token's ref \"refs/heads/evil\" is not a ref of the checkout's HEAD (refs/heads/main)".into(),
            ],
        ),
    ];
    for (fault, want) in cases {
        issuer.set_fault(fault.clone());
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        refused_in_preflight(&lane, &c, &reg, &format!("{fault:?}"), &want);
    }
}

/// The verifier takes RS256 as well as ES256: the adapter's whole path
/// (token request, discovery, JWKS, verification, claims) against issuers
/// signing each way.
#[test]
fn rs256_and_es256_issuers_are_both_verified() {
    use xtask::adapters::oidc::{Identified, identify};
    for alg in [Alg::RS256, Alg::ES256] {
        let issuer = Issuer::start(alg);
        let f = Fixture::with_files("identity-alg", &[]);
        issuer.trust(&f, REPOSITORY, &[Issuer::workflow(REPOSITORY)]);
        let env = issuer.run_env(&f, REPOSITORY, "9");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let text = fs::read_to_string(f.path("ci/release-policy.toml")).unwrap();
        let policy = lane_core::gates::parse_policy("ci/release-policy.toml", &text).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        match identify(&f.root, &policy, &get, now, "0.1.0").unwrap() {
            Identified::Verified { builder, trusted } => {
                assert_eq!(trusted, Ok(()));
                assert_eq!(builder.id, Issuer::workflow(REPOSITORY));
                let identity = builder.identity.unwrap();
                assert_eq!(identity.key.alg, format!("{alg:?}"));
                assert_eq!(identity.claims["run_id"], "9");
            }
            other => panic!("{alg:?}: {other:?}"),
        }
        assert_eq!(issuer.issued().len(), 1);
    }
}
