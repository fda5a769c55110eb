//! Is this digest an accepted release of the lane? The pure half of
//! `cargo xtask verify`: the requested digest, the attached envelopes and
//! the policy in, every reason for refusal out. An empty list of reasons is
//! the only way to `verified`. Fetching the evidence is the adapter's job
//! (xtask's `commands::verify`).

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::evidence::{ANNOTATION_PREDICATE, MEDIA_DSSE, MEDIA_RELEASE_RECORD};
use crate::id::{Digest, Repository, Target};
use crate::store::{Store, parse_digest};

use crate::evidence;
use crate::gates::GateName;
use crate::gates::{POLICY_PATH, Policy};
use crate::provenance::{LOCAL_BUILDER_ID, SLSA_PROVENANCE_V1, STATEMENT_TYPE, TEST_RESULT_V01};
use crate::signing::{self, SignatureCheck};

/// The refusal of a tag where a digest is required (verify and promote).
pub const NEEDS_DIGEST: &str =
    "verify needs a digest: REPO@sha256:...; `cargo xtask audit` can resolve a tag for you";

/// The predicate types the lane attaches, and only these.
pub const EXPECTED_PREDICATES: &[&str] = &[
    SLSA_PROVENANCE_V1,
    TEST_RESULT_V01,
    crate::sbom::PREDICATE_TYPE,
];

/// One DSSE envelope attached to the digest.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    /// Digest of the artifact manifest that carries it.
    pub artifact: String,
    /// The predicate type the artifact's annotation claims (informative).
    pub annotated_predicate: Option<String>,
    pub envelope: Value,
}

/// Everything attached to a digest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evidence {
    pub envelopes: Vec<Envelope>,
    /// The lane's release records (unsigned, informative), oldest first.
    pub records: Vec<Value>,
    /// Artifacts that could not be read or do not name the digest.
    pub problems: Vec<String>,
}

/// Options of [`check`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// The digest lives in a registry (a local builder is then never trusted).
    pub registry: bool,
    /// Accept the `local` builder (local store only): for releases made on
    /// this machine, which no CI workflow vouches for.
    pub allow_local_builder: bool,
}

/// One checked statement.
#[derive(Debug, Clone, Serialize)]
pub struct CheckedStatement {
    pub artifact: String,
    pub predicate_type: String,
    /// `trusted:<keyid>`, `unsigned` or `untrusted`.
    pub signature: String,
    pub statement: Value,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub digest: String,
    pub verified: bool,
    /// Every reason the digest is not an accepted release.
    pub reasons: Vec<String>,
    pub statements: Vec<CheckedStatement>,
}

impl Verdict {
    /// The newest statement of a predicate type signed by a key the policy
    /// trusts: what `audit` may show as fact.
    pub fn trusted_statement(&self, predicate_type: &str) -> Option<&Value> {
        self.statements
            .iter()
            .rev()
            .find(|s| s.predicate_type == predicate_type && s.signature.starts_with("trusted:"))
            .map(|s| &s.statement)
    }

    /// The newest statement of a predicate type.
    pub fn statement(&self, predicate_type: &str) -> Option<&Value> {
        self.statements
            .iter()
            .rev()
            .find(|s| s.predicate_type == predicate_type)
            .map(|s| &s.statement)
    }
}

/// The pure verification core: is `digest` an accepted release according
/// to `evidence` and `policy`? Every attached envelope must be signed by a
/// trusted key, name exactly `digest` as its subject and carry an expected
/// predicate type; at least one provenance and one gate statement must be
/// there; every provenance must name a trusted builder; at least one gate
/// statement must show every required gate passed.
pub fn check(digest: &str, evidence: &Evidence, policy: &Policy, opts: VerifyOptions) -> Verdict {
    let mut reasons: Vec<String> = evidence.problems.clone();
    let (trusted, bad_keys) = signing::trusted_keys(&policy.trusted_keys);
    reasons.extend(bad_keys.into_iter().map(|b| format!("{POLICY_PATH}: {b}")));
    if trusted.is_empty() {
        reasons.push(format!(
            "{POLICY_PATH} trusts no signing key: add the public key of the lane to [signing] trusted_keys (cargo xtask keygen)"
        ));
    }
    let hex = digest.trim_start_matches("sha256:");
    let mut statements = Vec::new();
    for e in &evidence.envelopes {
        let what = format!("artifact {}", e.artifact);
        let signature = match signing::check_envelope(&e.envelope, &trusted) {
            SignatureCheck::Trusted(k) => format!("trusted:{k}"),
            SignatureCheck::Unsigned => {
                reasons.push(format!("{what}: unsigned envelope"));
                "unsigned".into()
            }
            SignatureCheck::Untrusted(why) => {
                for w in why {
                    reasons.push(format!("{what}: {w}"));
                }
                "untrusted".into()
            }
        };
        if e.envelope["payloadType"] != evidence::PAYLOAD_INTOTO {
            reasons.push(format!(
                "{what}: payload type {} is not {}",
                e.envelope["payloadType"],
                evidence::PAYLOAD_INTOTO
            ));
        }
        let statement: Value = match e.envelope["payload"]
            .as_str()
            .and_then(evidence::unbase64)
            .and_then(|p| crate::strict_json::parse(&p).ok())
        {
            Some(s) => s,
            None => {
                reasons.push(format!(
                    "{what}: the payload is not a JSON in-toto statement"
                ));
                continue;
            }
        };
        if statement["_type"] != STATEMENT_TYPE {
            reasons.push(format!(
                "{what}: statement type {} is not {STATEMENT_TYPE}",
                statement["_type"]
            ));
        }
        let subjects = statement["subject"].as_array().cloned().unwrap_or_default();
        if subjects.is_empty() {
            reasons.push(format!("{what}: the statement names no subject"));
        }
        for s in &subjects {
            let got = s["digest"]["sha256"].as_str().unwrap_or_default();
            if got != hex {
                reasons.push(format!(
                    "{what}: the statement's subject is sha256:{got}, not the requested {digest}"
                ));
            }
        }
        let predicate_type = statement["predicateType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !EXPECTED_PREDICATES.contains(&predicate_type.as_str()) {
            reasons.push(format!(
                "{what}: unexpected predicate type {predicate_type:?} (expected one of {})",
                EXPECTED_PREDICATES.join(", ")
            ));
        } else if e
            .annotated_predicate
            .as_deref()
            .is_some_and(|a| a != predicate_type)
        {
            reasons.push(format!(
                "{what}: annotated as {:?} but holds {predicate_type:?}",
                e.annotated_predicate.as_deref().unwrap_or_default()
            ));
        }
        statements.push(CheckedStatement {
            artifact: e.artifact.clone(),
            predicate_type,
            signature,
            statement,
        });
    }

    let of = |p: &str| -> Vec<&CheckedStatement> {
        statements
            .iter()
            .filter(|s| s.predicate_type == p)
            .collect()
    };
    let provenance = of(SLSA_PROVENANCE_V1);
    let gate_statements = of(TEST_RESULT_V01);
    if provenance.is_empty() {
        reasons.push(format!(
            "no provenance statement ({SLSA_PROVENANCE_V1}) is attached to {digest}"
        ));
    }
    if gate_statements.is_empty() {
        reasons.push(format!(
            "no gate statement ({TEST_RESULT_V01}) is attached to {digest}"
        ));
    }
    for p in &provenance {
        reasons.extend(builder_reasons(&p.statement, policy, opts));
    }
    // Runs of the lane on the same inputs give the same digest, so one digest
    // can carry the gate statements of several runs (a rejected run, then an
    // accepted one). One signed statement in which every required gate
    // passed is enough; if there is none, every statement says why.
    let required = policy.required(opts.registry);
    let per_statement: Vec<Vec<String>> = gate_statements
        .iter()
        .map(|g| gate_reasons(&g.statement, &required))
        .collect();
    if !per_statement.iter().any(Vec::is_empty) {
        reasons.extend(per_statement.into_iter().flatten());
    }
    reasons.dedup();
    Verdict {
        digest: digest.to_string(),
        verified: reasons.is_empty(),
        reasons,
        statements,
    }
}

fn builder_reasons(provenance: &Value, policy: &Policy, opts: VerifyOptions) -> Vec<String> {
    let b = &provenance["predicate"]["runDetails"]["builder"];
    let id = b["id"].as_str().unwrap_or_default();
    if id.is_empty() {
        return vec!["the provenance names no builder".into()];
    }
    if id == LOCAL_BUILDER_ID {
        if opts.registry {
            return vec![format!(
                "built by a local run (builder {id:?}): a local build is never trusted for a registry; release from CI"
            )];
        }
        if !opts.allow_local_builder {
            return vec![format!(
                "built by a local run (builder {id:?}), not a CI workflow; pass --allow-local-builder to accept releases made into the local store on a developer machine"
            )];
        }
        return Vec::new();
    }
    if !id.starts_with("https://") {
        return vec![format!(
            "builder id {id:?} is not an https URI: SLSA v1 builder ids are URIs, and only a CI workflow's URI can be trusted"
        )];
    }
    if let Err(why) = crate::identity::trusted(&policy.trusted_builders, id) {
        return vec![format!("builder {id:?} is not trusted: {why}")];
    }
    // A trusted workflow name is not enough: the provenance must carry the
    // identity the lane verified (issuer, claims), consistent with the id.
    let def = &provenance["predicate"]["buildDefinition"];
    crate::identity::recorded_identity_reasons(
        id,
        &def["internalParameters"]["identity"],
        &policy.issuer,
        def["externalParameters"]["source"]["revision"].as_str(),
    )
}

fn gate_reasons(statement: &Value, required: &[GateName]) -> Vec<String> {
    let p = &statement["predicate"];
    let names = |k: &str| -> Vec<String> {
        p[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (passed, failed) = (names("passedTests"), names("failedTests"));
    let mut out = Vec::new();
    if p["result"] != "PASSED" {
        out.push(format!(
            "the gate statement reports result {} (the release was rejected)",
            p["result"]
        ));
    }
    // Gates the policy does not require are information, as in the lane.
    for r in required {
        if failed.iter().any(|f| r == f.as_str()) {
            out.push(format!("required gate {r} failed or did not run"));
        } else if !passed.iter().any(|p| r == p.as_str()) {
            out.push(format!("required gate {r} has no passing result"));
        }
    }
    out
}

/// Reads the evidence attached to `digest` in `repository`. Errors only when
/// the store cannot be read at all; a damaged artifact is a problem listed
/// in the result (and a reason for [`check`] to refuse).
pub fn fetch_evidence(
    store: &mut dyn Store,
    repository: &Repository,
    digest: &Digest,
) -> Result<Evidence> {
    fetch_manifest(store, repository, digest)?;
    let mut out = Evidence::default();
    for r in crate::store::referrers(store, repository, digest)? {
        let artifact = r["digest"].as_str().unwrap_or_default().to_string();
        let artifact_digest = match parse_digest(&r["digest"], "a referrers index entry") {
            Ok(d) => d,
            Err(e) => {
                out.problems.push(format!("artifact {artifact:?}: {e:#}"));
                continue;
            }
        };
        let kind = r["artifactType"].as_str().unwrap_or_default();
        // Signed statements (DSSE) and the signed SBOM (an in-toto statement
        // in a DSSE envelope, artifactType application/spdx+json).
        let signed = kind == MEDIA_DSSE || kind == crate::sbom::MEDIA_TYPE;
        if !signed && kind != MEDIA_RELEASE_RECORD {
            continue;
        }
        match read_artifact(store, repository, digest, &artifact_digest) {
            Ok(bytes) => {
                let parsed = crate::strict_json::parse(&bytes);
                match (signed, parsed) {
                    (true, Ok(envelope)) => out.envelopes.push(Envelope {
                        artifact,
                        annotated_predicate: r["annotations"][ANNOTATION_PREDICATE]
                            .as_str()
                            .map(str::to_string),
                        envelope,
                    }),
                    (_, Ok(record)) => out.records.push(record),
                    (_, Err(e)) => out
                        .problems
                        .push(format!("artifact {artifact} does not hold JSON: {e}")),
                }
            }
            Err(e) => out.problems.push(format!("artifact {artifact}: {e:#}")),
        }
    }
    Ok(out)
}

/// The single layer of an artifact manifest whose subject is `subject`.
fn read_artifact(
    store: &mut dyn Store,
    repository: &Repository,
    subject: &Digest,
    artifact: &Digest,
) -> Result<Vec<u8>> {
    let manifest: Value = serde_json::from_slice(&fetch_manifest(store, repository, artifact)?)
        .context("the artifact manifest is not JSON")?;
    if manifest["subject"]["digest"] != subject.as_str() {
        bail!(
            "its manifest names subject {}, not {subject}",
            manifest["subject"]["digest"]
        );
    }
    let layer = parse_digest(
        &manifest["layers"][0]["digest"],
        "the artifact manifest's layer",
    )?;
    store.blob(repository, &layer)
}

/// The manifest stored under `digest`, checked to hash to it.
pub fn fetch_manifest(
    store: &mut dyn Store,
    repository: &Repository,
    digest: &Digest,
) -> Result<Vec<u8>> {
    let bytes = store
        .manifest(repository, &Target::Digest(digest.clone()))?
        .with_context(|| format!("{repository}@{digest} is not in {}", store.describe()))?;
    if !digest.matches(&bytes) {
        bail!(
            "{} serves {repository}@{digest} with bytes that hash to {}",
            store.describe(),
            crate::layer::sha256(&bytes)
        );
    }
    Ok(bytes)
}

/// Statements built and signed here, one tampering at a time.
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::gates::{self, GateResult};
    use crate::id::Digest;
    use crate::oci::canonical_json;
    use crate::provenance::{self, BuilderRun, Subject};
    use crate::signing::Signer;
    use crate::testing::signer;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn builder(id: &str) -> BuilderRun {
        BuilderRun {
            id: if id == "local" {
                provenance::LOCAL_BUILDER_ID.into()
            } else {
                id.into()
            },
            version: Default::default(),
            invocation_id: format!("{id}/runs/1"),
            // A CI builder's provenance records its verified identity.
            identity: (id != "local").then(|| crate::testing::ci_identity(id)),
        }
    }

    fn subject(digest: &str) -> Subject {
        Subject {
            name: "registry.test/test/files".into(),
            digest: digest.parse().unwrap(),
        }
    }

    fn provenance_of(digest: &str, b: &BuilderRun) -> Value {
        let mut i = crate::testing::provenance_inputs();
        i.subject = subject(digest);
        i.builder = b.clone();
        provenance::provenance_statement(&i).unwrap()
    }

    fn gates_of(digest: &str, failing: &[&str], registry: bool) -> Value {
        let results: Vec<GateResult> = Policy::default()
            .required(registry)
            .iter()
            .map(|g| GateResult::check(*g, !failing.contains(&g.as_str()), "test", json!({})))
            .collect();
        let d = gates::decide(&Policy::default().required(registry), &results);
        provenance::gate_statement(
            &subject(digest),
            &d,
            "ci/release-policy.toml",
            &Digest::of(b"policy"),
            None,
            None,
        )
    }

    fn env(statement: &Value, signer: Option<&Signer>, artifact: &str) -> Envelope {
        let payload = canonical_json(statement).unwrap().bytes;
        Envelope {
            artifact: artifact.into(),
            annotated_predicate: statement["predicateType"].as_str().map(str::to_string),
            envelope: signing::envelope(&payload, signer),
        }
    }

    fn policy_trusting(keys: &[&Signer], builders: &[&str]) -> Policy {
        Policy {
            trusted_keys: keys.iter().map(|k| k.public_pem().unwrap()).collect(),
            trusted_builders: builders.iter().map(|b| b.to_string()).collect(),
            ..Policy::default()
        }
    }

    const CI: &str =
        "https://ci.example.com/org/repo/.github/workflows/release.yml@refs/heads/main";

    fn registry() -> VerifyOptions {
        VerifyOptions {
            registry: true,
            allow_local_builder: false,
        }
    }

    #[test]
    fn accepts_a_signed_accepted_release() {
        let k = signer(1);
        let d = digest('a');
        let ev = Evidence {
            envelopes: vec![
                env(&provenance_of(&d, &builder(CI)), Some(&k), "p"),
                env(&gates_of(&d, &[], true), Some(&k), "g"),
            ],
            ..Evidence::default()
        };
        let v = check(&d, &ev, &policy_trusting(&[&k], &[CI]), registry());
        assert!(v.verified, "{:?}", v.reasons);
        assert!(v.reasons.is_empty());
        assert_eq!(v.statements[0].signature, format!("trusted:{}", k.keyid));
    }

    #[test]
    fn lists_every_tampering() {
        let trusted = signer(1);
        let intruder = signer(2);
        let d = digest('a');
        let other = digest('e');
        let policy = policy_trusting(&[&trusted], &[CI]);
        let good_gates = env(&gates_of(&d, &[], true), Some(&trusted), "g");
        let check = |envelopes: Vec<Envelope>| {
            let v = check(
                &d,
                &Evidence {
                    envelopes,
                    ..Evidence::default()
                },
                &policy,
                registry(),
            );
            assert!(!v.verified);
            v.reasons
        };
        let has = |reasons: &[String], needle: &str| {
            assert!(
                reasons.iter().any(|r| r.contains(needle)),
                "no reason contains {needle:?}: {reasons:#?}"
            )
        };

        // Re-signed with an untrusted key.
        let r = check(vec![
            env(&provenance_of(&d, &builder(CI)), Some(&intruder), "p"),
            good_gates.clone(),
        ]);
        has(
            &r,
            &format!(
                "artifact p: signed by key \"{}\", which the policy does not trust",
                intruder.keyid
            ),
        );
        // Unsigned.
        let r = check(vec![
            env(&provenance_of(&d, &builder(CI)), None, "p"),
            good_gates.clone(),
        ]);
        assert_eq!(r, ["artifact p: unsigned envelope"]);
        // Payload rewritten after signing, signature kept.
        let mut altered = env(&provenance_of(&d, &builder(CI)), Some(&trusted), "p");
        let forged = canonical_json(&provenance_of(&d, &builder("https://evil.example.com")))
            .unwrap()
            .bytes;
        altered.envelope["payload"] = Value::String(evidence::base64(&forged));
        let r = check(vec![altered, good_gates.clone()]);
        has(&r, "does not verify (payload or signature altered)");
        has(&r, "builder \"https://evil.example.com\" is not trusted");
        // A statement whose subject is another digest.
        let r = check(vec![
            env(&provenance_of(&other, &builder(CI)), Some(&trusted), "p"),
            good_gates.clone(),
        ]);
        assert_eq!(
            r,
            [format!(
                "artifact p: the statement's subject is {other}, not the requested {d}"
            )]
        );
        // A gate statement reporting a failure.
        let r = check(vec![
            env(&provenance_of(&d, &builder(CI)), Some(&trusted), "p"),
            env(
                &gates_of(&d, &["smoke", "no-drift"], true),
                Some(&trusted),
                "g",
            ),
        ]);
        assert_eq!(
            r,
            [
                "the gate statement reports result \"FAILED\" (the release was rejected)",
                "required gate no-drift failed or did not run",
                "required gate smoke failed or did not run",
            ]
        );
        // A rejected run and an accepted run of the same inputs: the accepted one
        // counts. Either alone is judged on its own.
        let v = super::check(
            &d,
            &Evidence {
                envelopes: vec![
                    env(&provenance_of(&d, &builder(CI)), Some(&trusted), "p"),
                    env(&gates_of(&d, &["smoke"], true), Some(&trusted), "g1"),
                    good_gates.clone(),
                ],
                ..Evidence::default()
            },
            &policy,
            registry(),
        );
        assert!(v.verified, "{:?}", v.reasons);
        // ... but not when the passing one is unsigned.
        let r = check(vec![
            env(&provenance_of(&d, &builder(CI)), Some(&trusted), "p"),
            env(&gates_of(&d, &["smoke"], true), Some(&trusted), "g1"),
            env(&gates_of(&d, &[], true), None, "g2"),
        ]);
        has(&r, "artifact g2: unsigned envelope");
        // An unexpected predicate type, and no gate statement at all.
        let mut vsa = provenance_of(&d, &builder(CI));
        vsa["predicateType"] = json!("https://slsa.dev/verification_summary/v1");
        let r = check(vec![
            env(&provenance_of(&d, &builder(CI)), Some(&trusted), "p"),
            env(&vsa, Some(&trusted), "x"),
        ]);
        has(
            &r,
            "artifact x: unexpected predicate type \"https://slsa.dev/verification_summary/v1\"",
        );
        has(
            &r,
            "no gate statement (https://in-toto.io/attestation/test-result/v0.1) is attached",
        );
        // Nothing attached.
        let r = check(vec![]);
        has(&r, "no provenance statement");
        has(&r, "no gate statement");
    }

    #[test]
    fn trusts_builders_by_policy_and_never_a_local_one_for_a_registry() {
        let k = signer(1);
        let d = digest('a');
        let ev = |b: &BuilderRun, registry: bool| Evidence {
            envelopes: vec![
                env(&provenance_of(&d, b), Some(&k), "p"),
                env(&gates_of(&d, &[], registry), Some(&k), "g"),
            ],
            ..Evidence::default()
        };
        let local = builder("local");
        let opts = |registry, allow_local_builder| VerifyOptions {
            registry,
            allow_local_builder,
        };
        let p = policy_trusting(&[&k], &[CI]);
        let v = check(&d, &ev(&local, true), &p, opts(true, true));
        assert_eq!(
            v.reasons,
            [format!(
                "built by a local run (builder {:?}): a local build is never trusted for a registry; release from CI",
                provenance::LOCAL_BUILDER_ID
            )]
        );
        // A builder id that is not a URI (as the lane wrote before SLSA
        // conformance) is never trusted, in either store.
        let mut old = builder("x");
        old.id = "local".into();
        for registry in [true, false] {
            let v = check(&d, &ev(&old, registry), &p, opts(registry, true));
            assert!(
                v.reasons.iter().any(|r| r.contains("is not an https URI")),
                "{:?}",
                v.reasons
            );
        }
        let v = check(&d, &ev(&local, false), &p, opts(false, false));
        assert!(
            v.reasons[0].contains("pass --allow-local-builder"),
            "{:?}",
            v.reasons
        );
        let v = check(&d, &ev(&local, false), &p, opts(false, true));
        assert!(v.verified, "{:?}", v.reasons);
        let other_ci = builder("https://ci.example.com/fork/.github/workflows/x.yml@refs/heads/x");
        let v = check(&d, &ev(&other_ci, true), &p, registry());
        assert_eq!(v.reasons.len(), 1);
        assert!(
            v.reasons[0].contains("matches no entry of [builder] trusted"),
            "{:?}",
            v.reasons
        );
        // A policy that trusts no key verifies nothing.
        let v = check(
            &d,
            &ev(&builder(CI), true),
            &policy_trusting(&[], &[CI]),
            registry(),
        );
        assert!(
            v.reasons
                .iter()
                .any(|r| r.contains("trusts no signing key")),
            "{:?}",
            v.reasons
        );
    }
}
