//! The audit engine (`cargo xtask audit REPO@sha256:...|REPO:TAG`): the five audit questions
//! for one digest, in one screen. What was built, from which source, by which
//! lane, under which immutable identity (and which tags point at it now),
//! with which gate results, and whether the evidence verifies. Given a tag,
//! it first says which digest the tag resolves to now.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use crate::lane::verify;
use lane_core::gates::Policy;
use lane_core::id::{Digest, Repository, Target};
use lane_core::oci::{ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME};
use lane_core::provenance::{LOCAL_BUILDER_ID, SLSA_PROVENANCE_V1, TEST_RESULT_V01};
use lane_core::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub reference: String,
    pub repository: Repository,
    /// Set when a tag was given: the tag and the digest it resolves to now.
    pub tag: Option<TagState>,
    pub image: Image,
    pub source: Value,
    pub builder: Value,
    /// Tags of the repository that point at this digest now.
    pub tags: Vec<String>,
    /// Tags the release intended (from the provenance).
    pub release_tags: Vec<String>,
    pub gates: Vec<Gate>,
    /// The gate statement's overall result (`PASSED`, `FAILED`, or null).
    pub gate_result: Value,
    /// Every release of this digest, oldest first: one provenance statement
    /// each, signed by a key the policy trusts (a digest whose inputs did
    /// not change is released again by later commits, its image-bound
    /// gates carried over).
    pub releases: Vec<ReleaseOf>,
    /// Provenance statements attached to the digest that are unsigned or
    /// signed by a key the policy does not trust: claims, not facts.
    pub unverified_releases: Vec<ReleaseOf>,
    pub verification: Verification,
}

/// One release of the digest, from its provenance statement.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseOf {
    pub revision: Value,
    pub builder: Value,
    pub invocation: Value,
    pub started_on: Value,
    /// The provenance's artifact in the store.
    pub artifact: String,
    /// `trusted:<keyid>`, `unsigned` or `untrusted`: only a trusted
    /// signature makes this release a fact.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TagState {
    pub name: String,
    pub resolves_to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub name: Value,
    pub subject: Value,
    pub digest: Digest,
    pub config: Value,
    pub layers: Vec<Value>,
    pub base: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub gate: String,
    /// From the signed gate statement: `passed` or `failed`.
    pub state: String,
    /// From the lane's release record (unsigned): `passed`, `failed` or
    /// `missing`, and its one-line evidence summary.
    pub recorded_state: Option<String>,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub verified: bool,
    pub reasons: Vec<String>,
    /// Each statement: artifact digest, predicate type, signature state.
    pub statements: Vec<Value>,
}

pub fn audit(
    store: &mut dyn Store,
    policy: &Policy,
    reference: &str,
    allow_local_builder: bool,
) -> Result<Audit> {
    let r = verify::parse_reference(reference)?;
    let repository = r.repository.clone();
    let (digest, tag) = match &r.target {
        Target::Digest(digest) => (digest.clone(), None),
        Target::Tag(tag) => {
            let Some(d) = store.resolve_tag(&repository, tag)? else {
                let known: Vec<String> = store
                    .list_tags(&repository)?
                    .into_iter()
                    .filter(|t| !t.starts_with("sha256-"))
                    .collect();
                anyhow::bail!(
                    "tag {r} does not exist in {}; tags of {repository}: {}",
                    store.describe(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            };
            (
                d.clone(),
                Some(TagState {
                    name: tag.to_string(),
                    resolves_to: d.to_string(),
                }),
            )
        }
    };
    let manifest: Value =
        serde_json::from_slice(&verify::fetch_manifest(store, &repository, &digest)?)
            .with_context(|| format!("{repository}@{digest} is not a JSON manifest"))?;
    let (evidence, verdict) =
        verify::verify(store, &repository, &digest, policy, allow_local_builder)?;

    let mut tags = Vec::new();
    for t in store.list_tags(&repository)? {
        // Fallback tags (sha256-...) do not parse as tags a user moves.
        let Ok(tag) = t.parse::<lane_core::id::Tag>() else {
            continue;
        };
        if store.resolve_tag(&repository, &tag)?.as_ref() == Some(&digest) {
            tags.push(t);
        }
    }

    // Facts only from statements signed by a trusted key: an unsigned or
    // untrusted statement is listed under `verification.statements` and
    // `unverified_releases`, never shown as the origin.
    let prov = verdict
        .trusted_statement(SLSA_PROVENANCE_V1)
        .cloned()
        .unwrap_or(Value::Null);
    let gates_st = verdict
        .trusted_statement(TEST_RESULT_V01)
        .cloned()
        .unwrap_or(Value::Null);
    let def = &prov["predicate"]["buildDefinition"];
    let run = &prov["predicate"]["runDetails"];
    let ann = &manifest["annotations"];
    let record = evidence.records.last().cloned().unwrap_or(Value::Null);
    let recorded: Vec<Value> = record["release"]["decision"]["gates"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    let mut gates = Vec::new();
    let p = &gates_st["predicate"];
    for (key, state) in [("passedTests", "passed"), ("failedTests", "failed")] {
        for name in p[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let rec = recorded.iter().find(|g| g["gate"] == name);
            gates.push(Gate {
                gate: name.to_string(),
                state: state.into(),
                recorded_state: rec.and_then(|g| g["state"].as_str()).map(str::to_string),
                summary: rec
                    .and_then(|g| g["summary"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }

    Ok(Audit {
        reference: r.to_string(),
        repository,
        tag,
        image: Image {
            name: def["externalParameters"]["image"].clone(),
            subject: prov["subject"][0]["name"].clone(),
            digest: digest.clone(),
            config: manifest["config"]["digest"].clone(),
            layers: manifest["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|l| json!({ "digest": l["digest"], "size": l["size"], "mediaType": l["mediaType"] }))
                .collect(),
            base: json!({ "name": ann[ANNOTATION_BASE_NAME], "digest": ann[ANNOTATION_BASE_DIGEST] }),
        },
        source: json!({
            "repository": def["externalParameters"]["source"]["repository"],
            "revision": def["externalParameters"]["source"]["revision"],
            "clean": def["externalParameters"]["source"]["treeClean"],
        }),
        builder: json!({
            "id": run["builder"]["id"],
            // A CI workflow's URI with the identity the lane verified (its
            // OIDC token's claims); the local builder is never authoritative.
            // Whether the policy trusts it is `verification`'s answer.
            "authoritative": run["builder"]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("https://") && id != LOCAL_BUILDER_ID)
                && def["internalParameters"]["identity"].is_object(),
            "identity": def["internalParameters"]["identity"],
            "invocation": run["metadata"]["invocationId"],
            "startedOn": run["metadata"]["startedOn"],
            "finishedOn": run["metadata"]["finishedOn"],
        }),
        tags,
        release_tags: def["externalParameters"]["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        gates,
        gate_result: p["result"].clone(),
        releases: releases_of(&verdict, true),
        unverified_releases: releases_of(&verdict, false),
        verification: Verification {
            verified: verdict.verified,
            reasons: verdict.reasons.clone(),
            statements: verdict
                .statements
                .iter()
                .map(|s| json!({ "artifact": s.artifact, "predicateType": s.predicate_type, "signature": s.signature }))
                .collect(),
        },
    })
}

/// The releases of a verdict's provenance statements, oldest first: those
/// signed by a trusted key (`trusted`), or the others.
fn releases_of(verdict: &verify::Verdict, trusted: bool) -> Vec<ReleaseOf> {
    verdict
        .statements
        .iter()
        .filter(|s| s.predicate_type == SLSA_PROVENANCE_V1)
        .filter(|s| s.signature.starts_with("trusted:") == trusted)
        .map(|s| {
            let p = &s.statement["predicate"];
            ReleaseOf {
                revision: p["buildDefinition"]["externalParameters"]["source"]["revision"].clone(),
                builder: p["runDetails"]["builder"]["id"].clone(),
                invocation: p["runDetails"]["metadata"]["invocationId"].clone(),
                started_on: p["runDetails"]["metadata"]["startedOn"].clone(),
                artifact: s.artifact.clone(),
                signature: s.signature.clone(),
            }
        })
        .collect()
}
