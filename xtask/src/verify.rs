//! `cargo xtask verify`: is this digest an accepted release of the lane?
//!
//! Two halves. [`fetch_evidence`] reads what is attached to a digest through
//! a [`Store`] (the adapter). [`check`] is pure: the requested digest, the
//! attached envelopes and the policy in, every reason for refusal out. An
//! empty list of reasons is the only way to `verified`.

use std::fmt;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::evidence::{self, ANNOTATION_PREDICATE, MEDIA_DSSE, MEDIA_RELEASE_RECORD};
use crate::gates::Policy;
use crate::provenance::{SLSA_PROVENANCE_V1, STATEMENT_TYPE, TEST_RESULT_V01};
use crate::release::POLICY_PATH;
use crate::signing::{self, SignatureCheck};
use crate::store::Store;

/// The refusal of a tag where a digest is required (verify and promote).
pub const NEEDS_DIGEST: &str =
    "verify needs a digest: REPO@sha256:...; `cargo xtask audit` can resolve a tag for you";

/// The predicate types the lane attaches, and only these.
pub const EXPECTED_PREDICATES: &[&str] = &[SLSA_PROVENANCE_V1, TEST_RESULT_V01];

/// A parsed image reference: `REPO@sha256:<64 hex>` or `REPO:TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Digest { repository: String, digest: String },
    Tag { repository: String, tag: String },
}

impl Reference {
    pub fn repository(&self) -> &str {
        match self {
            Reference::Digest { repository, .. } | Reference::Tag { repository, .. } => repository,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Digest { repository, digest } => write!(f, "{repository}@{digest}"),
            Reference::Tag { repository, tag } => write!(f, "{repository}:{tag}"),
        }
    }
}

fn repository_ok(r: &str) -> bool {
    // The OCI distribution grammar of a repository name; it also keeps the
    // local store's paths inside target/local-registry/.
    let re = regex::Regex::new(
        r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("valid regex");
    re.is_match(r)
}

/// Checks a tag name against the OCI grammar; `sha256-...` names are the
/// referrers fallback and cannot be moved by hand.
pub fn check_tag(tag: &str) -> Result<()> {
    let re = regex::Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").expect("valid regex");
    if !re.is_match(tag) {
        bail!("{tag:?} is not a valid tag: use letters, digits, '_', '.', '-' (at most 128)");
    }
    if tag.starts_with("sha256-") {
        bail!("{tag:?} is a referrers fallback tag (sha256-<hex>); pick another tag name");
    }
    Ok(())
}

/// Checks a repository name (e.g. the `--to` of promote).
pub fn check_repository(repository: &str) -> Result<()> {
    if !repository_ok(repository) {
        bail!(
            "{repository:?} is not a valid repository name: lowercase letters, digits and separators (., _, -), components joined by '/', as in image.toml"
        );
    }
    Ok(())
}

/// Parses `REPO@sha256:<hex>` or `REPO:TAG`.
pub fn parse_reference(text: &str) -> Result<Reference> {
    let text = text.trim();
    if let Some((repository, digest)) = text.split_once('@') {
        check_repository(repository)?;
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!(
                "{digest:?} is not a digest: write sha256: followed by 64 lowercase hex digits, as `cargo xtask release` prints it"
            );
        }
        return Ok(Reference::Digest {
            repository: repository.to_string(),
            digest: digest.to_string(),
        });
    }
    let slash = text.rfind('/').map_or(0, |i| i + 1);
    match text[slash..].rfind(':') {
        Some(i) => {
            let (repository, tag) = (&text[..slash + i], &text[slash + i + 1..]);
            check_repository(repository)?;
            check_tag(tag)?;
            Ok(Reference::Tag {
                repository: repository.to_string(),
                tag: tag.to_string(),
            })
        }
        None => {
            check_repository(text)?;
            Ok(Reference::Tag {
                repository: text.to_string(),
                tag: "latest".into(),
            })
        }
    }
}

/// Parses a reference that must name a digest; a tag gets [`NEEDS_DIGEST`].
pub fn parse_digest_reference(text: &str) -> Result<(String, String)> {
    match parse_reference(text) {
        Ok(Reference::Digest { repository, digest }) => Ok((repository, digest)),
        Ok(Reference::Tag { .. }) => bail!("{NEEDS_DIGEST}"),
        // `repo:tag` with a bad tag is still a tag-only reference.
        Err(_) if !text.contains('@') => bail!("{NEEDS_DIGEST}"),
        Err(e) => Err(e),
    }
}

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

/// Reads the evidence attached to `digest` in `repository`. Errors only when
/// the store cannot be read at all; a damaged artifact is a problem listed
/// in the result (and a reason for [`check`] to refuse).
pub fn fetch_evidence(store: &mut dyn Store, repository: &str, digest: &str) -> Result<Evidence> {
    fetch_manifest(store, repository, digest)?;
    let mut out = Evidence::default();
    for r in crate::store::referrers(store, repository, digest)? {
        let artifact = r["digest"].as_str().unwrap_or_default().to_string();
        let kind = r["artifactType"].as_str().unwrap_or_default();
        if kind != MEDIA_DSSE && kind != MEDIA_RELEASE_RECORD {
            continue;
        }
        match read_artifact(store, repository, digest, &artifact) {
            Ok(bytes) => {
                let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
                match (kind, parsed) {
                    (MEDIA_DSSE, Ok(envelope)) => out.envelopes.push(Envelope {
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
    repository: &str,
    subject: &str,
    artifact: &str,
) -> Result<Vec<u8>> {
    let manifest: Value = serde_json::from_slice(&fetch_manifest(store, repository, artifact)?)
        .context("the artifact manifest is not JSON")?;
    if manifest["subject"]["digest"] != subject {
        bail!(
            "its manifest names subject {}, not {subject}",
            manifest["subject"]["digest"]
        );
    }
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .context("the artifact manifest has no layer")?;
    store.blob(repository, layer)
}

/// The manifest stored under `digest`, checked to hash to it.
pub fn fetch_manifest(store: &mut dyn Store, repository: &str, digest: &str) -> Result<Vec<u8>> {
    let bytes = store
        .manifest(repository, digest)?
        .with_context(|| format!("{repository}@{digest} is not in {}", store.describe()))?;
    let actual = crate::layer::sha256(&bytes);
    if actual != digest {
        bail!(
            "{} serves {repository}@{digest} with bytes that hash to {actual}",
            store.describe()
        );
    }
    Ok(bytes)
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
    let local = id.is_empty() || id == "local" || b["authoritative"] != true;
    if id.is_empty() {
        return vec!["the provenance names no builder".into()];
    }
    if local {
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
    if !policy.trusted_builders.is_empty() && !policy.trusted_builders.iter().any(|t| t == id) {
        return vec![format!(
            "builder {id:?} is not trusted: it is not in [builder] trusted of {POLICY_PATH}"
        )];
    }
    Vec::new()
}

fn gate_reasons(statement: &Value, required: &[String]) -> Vec<String> {
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
        if failed.contains(r) {
            out.push(format!("required gate {r} failed or did not run"));
        } else if !passed.contains(r) {
            out.push(format!("required gate {r} has no passing result"));
        }
    }
    out
}

/// Fetches and checks: the whole of `cargo xtask verify`.
pub fn verify(
    store: &mut dyn Store,
    repository: &str,
    digest: &str,
    policy: &Policy,
    allow_local_builder: bool,
) -> Result<(Evidence, Verdict)> {
    let evidence = fetch_evidence(store, repository, digest)?;
    let verdict = check(
        digest,
        &evidence,
        policy,
        VerifyOptions {
            registry: store.is_registry(),
            allow_local_builder,
        },
    );
    Ok((evidence, verdict))
}

/// Human output of a verdict.
pub fn summary(reference: &str, v: &Verdict) -> String {
    let mut out = if v.verified {
        format!("{reference}: VERIFIED, an accepted release of the lane\n")
    } else {
        format!(
            "{reference}: NOT VERIFIED ({} reason{})\n",
            v.reasons.len(),
            if v.reasons.len() == 1 { "" } else { "s" }
        )
    };
    for r in &v.reasons {
        out.push_str(&format!("  - {r}\n"));
    }
    for s in &v.statements {
        out.push_str(&format!(
            "  statement {} ({}) signature {}\n",
            s.artifact, s.predicate_type, s.signature
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_tags_are_refused_where_a_digest_is_needed() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_reference(&format!("platform/hello@{d}")).unwrap(),
            Reference::Digest {
                repository: "platform/hello".into(),
                digest: d.clone()
            }
        );
        assert_eq!(
            parse_reference("platform/hello:v1").unwrap(),
            Reference::Tag {
                repository: "platform/hello".into(),
                tag: "v1".into()
            }
        );
        for tag_only in ["platform/hello:v1", "platform/hello", "platform/hello:"] {
            assert_eq!(
                parse_digest_reference(tag_only).unwrap_err().to_string(),
                NEEDS_DIGEST
            );
        }
        assert!(parse_digest_reference("platform/hello@sha256:abc").is_err());
        assert!(parse_reference(&format!("../etc@{d}")).is_err());
        assert!(check_tag("sha256-abc").is_err());
    }
}
