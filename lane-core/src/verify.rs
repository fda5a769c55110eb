//! Is this digest an accepted release of the lane? The pure half of
//! `cargo xtask verify`: the requested digest, the attached envelopes and
//! the policy in, every reason for refusal out. An empty list of reasons is
//! the only way to `verified`. Fetching the evidence is the adapter's job
//! (xtask's `commands::verify`).

use serde::Serialize;
use serde_json::Value;

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
            .and_then(|p| serde_json::from_slice(&p).ok())
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
