//! In-toto statements: SLSA Provenance v1 for the build, and a test-result
//! statement for the gates. Pure: values in, JSON values out.
//!
//! The statements are serialised once through [`crate::oci::canonical_json`]
//! by the caller; those bytes are what is attached to the image digest.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::gates::{Decision, GateState};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
pub const TEST_RESULT_V01: &str = "https://in-toto.io/attestation/test-result/v0.1";
/// The build type of this lane; versioned with the shape of the parameters.
pub const BUILD_TYPE: &str =
    "https://git.example.com/platform/release-lane/build-types/xtask-release/v1";

/// Who ran the lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub id: String,
    /// True for a CI workflow identity; false for a local run.
    pub authoritative: bool,
    pub invocation_id: String,
}

impl Builder {
    /// Reads the builder identity from a CI environment (GitHub Actions'
    /// variables); anything else is a local, non-authoritative run.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Builder {
        if get("GITHUB_ACTIONS").as_deref() == Some("true") {
            let server = get("GITHUB_SERVER_URL").unwrap_or_default();
            let workflow = get("GITHUB_WORKFLOW_REF").unwrap_or_default();
            let repo = get("GITHUB_REPOSITORY").unwrap_or_default();
            let run = get("GITHUB_RUN_ID").unwrap_or_default();
            let attempt = get("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
            if !server.is_empty() && !workflow.is_empty() && !run.is_empty() {
                return Builder {
                    id: format!("{server}/{workflow}"),
                    authoritative: true,
                    invocation_id: format!("{server}/{repo}/actions/runs/{run}/attempts/{attempt}"),
                };
            }
        }
        Builder {
            id: "local".into(),
            authoritative: false,
            invocation_id: format!(
                "local:{}",
                get("LANE_INVOCATION_ID").unwrap_or_else(|| "unrecorded".into())
            ),
        }
    }
}

/// A resolved dependency (`ResourceDescriptor` of in-toto).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Algorithm -> hex (`sha256`, `gitCommit`).
    pub digest: std::collections::BTreeMap<String, String>,
}

impl Dependency {
    pub fn named(name: &str, algo: &str, hex: &str) -> Dependency {
        Dependency {
            name: Some(name.into()),
            uri: None,
            digest: [(
                algo.to_string(),
                hex.trim_start_matches("sha256:").to_string(),
            )]
            .into(),
        }
    }

    pub fn uri(uri: &str, algo: &str, hex: &str) -> Dependency {
        Dependency {
            name: None,
            uri: Some(uri.into()),
            digest: [(
                algo.to_string(),
                hex.trim_start_matches("sha256:").to_string(),
            )]
            .into(),
        }
    }
}

/// Everything the provenance of one image records.
#[derive(Debug, Clone, Serialize)]
pub struct ProvenanceInputs {
    /// `REGISTRY/REPOSITORY` (or `local/REPOSITORY`) of the image.
    pub subject_name: String,
    pub manifest_digest: String,
    pub image: String,
    pub tags: Vec<String>,
    pub source_repository: String,
    pub revision: String,
    pub tree_clean: bool,
    pub policy_path: String,
    pub policy_digest: String,
    pub rustc: String,
    pub lane_version: String,
    pub encoder: String,
    pub dependencies: Vec<Dependency>,
    pub builder: Builder,
    pub started_on: String,
    pub finished_on: String,
}

fn subject(name: &str, digest: &str) -> Value {
    json!([{ "name": name, "digest": { "sha256": digest.trim_start_matches("sha256:") } }])
}

/// The SLSA Provenance v1 statement of one image.
pub fn provenance_statement(i: &ProvenanceInputs) -> Value {
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject(&i.subject_name, &i.manifest_digest),
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "image": i.image,
                    "tags": i.tags,
                    "source": { "repository": i.source_repository, "revision": i.revision, "treeClean": i.tree_clean },
                    "policy": { "path": i.policy_path, "digest": { "sha256": i.policy_digest.trim_start_matches("sha256:") } },
                },
                "internalParameters": {
                    "rustc": i.rustc,
                    "lane": { "version": i.lane_version, "revision": i.revision },
                    "layerEncoder": i.encoder,
                },
                "resolvedDependencies": i.dependencies,
            },
            "runDetails": {
                "builder": { "id": i.builder.id, "authoritative": i.builder.authoritative },
                "metadata": {
                    "invocationId": i.builder.invocation_id,
                    "startedOn": i.started_on,
                    "finishedOn": i.finished_on,
                },
            },
        },
    })
}

/// The gate results of one image as an in-toto test-result statement.
pub fn gate_statement(
    subject_name: &str,
    manifest_digest: &str,
    decision: &Decision,
    policy: &Dependency,
) -> Value {
    let names = |state: GateState| -> Vec<String> {
        decision
            .gates
            .iter()
            .filter(|g| g.state == state)
            .map(|g| g.gate.clone())
            .collect()
    };
    // Required gates that did not pass failed the release; gates the policy
    // does not require are information: "warned" when they did not pass.
    let not_passed = |required: bool| -> Vec<String> {
        decision
            .gates
            .iter()
            .filter(|g| {
                g.state != GateState::Passed && decision.required.contains(&g.gate) == required
            })
            .map(|g| g.gate.clone())
            .collect()
    };
    let failed = not_passed(true);
    let warned = not_passed(false);
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject(subject_name, manifest_digest),
        "predicateType": TEST_RESULT_V01,
        "predicate": {
            "result": if decision.accepted { "PASSED" } else { "FAILED" },
            "configuration": [policy],
            "passedTests": names(GateState::Passed),
            "warnedTests": warned,
            "failedTests": failed,
        },
    })
}

/// The `provenance-complete` check: every field a reviewer needs is present
/// and non-empty. Returns every missing field.
pub fn missing_fields(statement: &Value) -> Vec<String> {
    let required = [
        "/_type",
        "/subject/0/name",
        "/subject/0/digest/sha256",
        "/predicateType",
        "/predicate/buildDefinition/buildType",
        "/predicate/buildDefinition/externalParameters/image",
        "/predicate/buildDefinition/externalParameters/source/repository",
        "/predicate/buildDefinition/externalParameters/source/revision",
        "/predicate/buildDefinition/externalParameters/policy/digest/sha256",
        "/predicate/buildDefinition/internalParameters/rustc",
        "/predicate/buildDefinition/internalParameters/lane/version",
        "/predicate/buildDefinition/internalParameters/layerEncoder",
        "/predicate/buildDefinition/resolvedDependencies/0",
        "/predicate/runDetails/builder/id",
        "/predicate/runDetails/metadata/invocationId",
        "/predicate/runDetails/metadata/startedOn",
        "/predicate/runDetails/metadata/finishedOn",
    ];
    let mut missing: Vec<String> = required
        .iter()
        .filter(|p| match statement.pointer(p) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        })
        .map(|p| p.to_string())
        .collect();
    let deps = statement
        .pointer("/predicate/buildDefinition/resolvedDependencies")
        .and_then(Value::as_array);
    let has = |name: &str| {
        deps.is_some_and(|d| {
            d.iter().any(|x| {
                x["name"] == name || x["uri"].as_str().is_some_and(|u| u.starts_with(name))
            })
        })
    };
    for want in ["git+", "Cargo.lock"] {
        if !has(want) {
            missing.push(format!("resolvedDependencies: {want}"));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::{GateResult, decide};

    fn inputs() -> ProvenanceInputs {
        ProvenanceInputs {
            subject_name: "127.0.0.1:5000/platform/hello".into(),
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            image: "hello".into(),
            tags: vec!["latest".into()],
            source_repository: "https://git.example.com/x".into(),
            revision: "0123".into(),
            tree_clean: true,
            policy_path: "ci/release-policy.toml".into(),
            policy_digest: format!("sha256:{}", "b".repeat(64)),
            rustc: "rustc 1.95.0".into(),
            lane_version: "0.1.0".into(),
            encoder: "lane-layer/format=1".into(),
            dependencies: vec![
                Dependency::uri("git+https://git.example.com/x@0123", "gitCommit", "0123"),
                Dependency::named("Cargo.lock", "sha256", "cc"),
            ],
            builder: Builder {
                id: "local".into(),
                authoritative: false,
                invocation_id: "local:1".into(),
            },
            started_on: "2026-01-01T00:00:00Z".into(),
            finished_on: "2026-01-01T00:01:00Z".into(),
        }
    }

    #[test]
    fn provenance_is_complete_and_bound_to_the_digest() {
        let s = provenance_statement(&inputs());
        assert_eq!(missing_fields(&s), Vec::<String>::new());
        assert_eq!(s["subject"][0]["digest"]["sha256"], "a".repeat(64));
        assert_eq!(s["predicateType"], SLSA_PROVENANCE_V1);
    }

    #[test]
    fn incomplete_provenance_lists_every_gap() {
        let mut i = inputs();
        i.revision.clear();
        i.dependencies.clear();
        let missing = missing_fields(&provenance_statement(&i));
        assert!(missing.contains(
            &"/predicate/buildDefinition/externalParameters/source/revision".to_string()
        ));
        assert!(missing.contains(&"resolvedDependencies: Cargo.lock".to_string()));
        assert!(missing.contains(&"resolvedDependencies: git+".to_string()));
    }

    #[test]
    fn gate_statement_lists_missing_as_failed() {
        let d = decide(
            &["smoke".into(), "no-drift".into()],
            &[GateResult::passed("no-drift", "ok", json!({}))],
        );
        let s = gate_statement(
            "r/x",
            "sha256:00",
            &d,
            &Dependency::named("ci/release-policy.toml", "sha256", "bb"),
        );
        assert_eq!(s["predicate"]["result"], "FAILED");
        assert_eq!(s["predicate"]["failedTests"], json!(["smoke"]));
        assert_eq!(s["predicate"]["passedTests"], json!(["no-drift"]));
    }

    #[test]
    fn builder_identity_comes_from_ci() {
        let env = |k: &str| -> Option<String> {
            match k {
                "GITHUB_ACTIONS" => Some("true".into()),
                "GITHUB_SERVER_URL" => Some("https://ci.example.com".into()),
                "GITHUB_WORKFLOW_REF" => {
                    Some("org/repo/.github/workflows/release.yml@refs/heads/main".into())
                }
                "GITHUB_REPOSITORY" => Some("org/repo".into()),
                "GITHUB_RUN_ID" => Some("42".into()),
                _ => None,
            }
        };
        let b = Builder::from_env(&env);
        assert!(b.authoritative);
        assert_eq!(
            b.id,
            "https://ci.example.com/org/repo/.github/workflows/release.yml@refs/heads/main"
        );
        assert_eq!(
            b.invocation_id,
            "https://ci.example.com/org/repo/actions/runs/42/attempts/1"
        );
        let local = Builder::from_env(&|_| None);
        assert!(!local.authoritative);
        assert_eq!(local.id, "local");
    }
}
