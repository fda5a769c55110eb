//! Conforming in-toto statements: SLSA Provenance v1 for the build and
//! in-toto test-result v0.1 for the gates, with only the fields those
//! specifications define, so strict independent parsers (the in-toto
//! project's protobuf bindings, unknown fields rejected) accept them.
//!
//! - the lane's own facts (image, tags, source, policy, rustc, encoder) live
//!   in `externalParameters` / `internalParameters`, which SLSA leaves free;
//!   nothing is added anywhere else (no extension fields at all, so even a
//!   parser that rejects TypeURI-named extensions accepts the documents);
//! - whether a builder is trusted is said by its id alone: a CI workflow's
//!   URI, or [`LOCAL_BUILDER_ID`], which no policy may trust for a registry;
//! - `resolvedDependencies` lists every input artifact as a
//!   ResourceDescriptor with a package URL and a sha256 (each `.deb`, crate,
//!   wheel and base image), the source commit as `git+URL@SHA`, and the
//!   lockfiles by path and digest.
//!
//! Inputs are plain values; callers serialise the result once with
//! [`crate::oci::canonical_json`].

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::gates::{Decision, GateState};
use crate::id::Digest;
use crate::identity::CiIdentity;
use crate::purl;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
pub const TEST_RESULT_V01: &str = "https://in-toto.io/attestation/test-result/v0.1";
/// The release lane project: the namespace of its build type and builder ids.
pub const LANE_PROJECT: &str = "https://git.example.com/platform/release-lane";
/// The build type of this lane; versioned with the shape of the parameters.
pub const BUILD_TYPE: &str =
    "https://git.example.com/platform/release-lane/build-types/xtask-release/v1";
/// The builder id of a run on a machine nobody vouches for (a developer's
/// `cargo xtask release`). It lives in the lane project's namespace, not the
/// user's, so one string means "local" in every repository that uses the
/// lane and one policy rule can refuse it. Documented in
/// docs/builders/local.md.
pub const LOCAL_BUILDER_ID: &str =
    "https://git.example.com/platform/release-lane/builders/local/v1";

/// Who ran the lane: `runDetails.builder` plus the invocation id.
#[derive(Debug, Clone, PartialEq)]
pub struct BuilderRun {
    /// A URI: the CI workflow identity (`SERVER/job_workflow_ref` of a
    /// verified token) or [`LOCAL_BUILDER_ID`].
    pub id: String,
    /// `builder.version`: component -> version (the lane's own version).
    pub version: BTreeMap<String, String>,
    pub invocation_id: String,
    /// The verified OIDC identity of a CI run (`None` for the local
    /// builder), recorded in `internalParameters.identity`.
    pub identity: Option<CiIdentity>,
}

impl BuilderRun {
    /// The local builder: a run nobody vouches for. `invocation` names it
    /// (`LANE_INVOCATION_ID`), or `None`.
    pub fn local(lane_version: &str, invocation: Option<String>) -> BuilderRun {
        BuilderRun {
            id: LOCAL_BUILDER_ID.into(),
            version: [("release-lane".to_string(), lane_version.to_string())].into(),
            invocation_id: format!(
                "local:{}",
                invocation.unwrap_or_else(|| "unrecorded".into())
            ),
            identity: None,
        }
    }

    /// A CI run whose identity was verified: the builder id is the
    /// workflow identity `SERVER/job_workflow_ref`, the invocation the run
    /// (`SERVER/REPOSITORY/actions/runs/RUN_ID/attempts/RUN_ATTEMPT`), both
    /// from the verified claims.
    pub fn ci(server_url: &str, identity: CiIdentity, lane_version: &str) -> Result<BuilderRun> {
        let id = crate::identity::workflow_identity(server_url, &identity.claims)?;
        let claim = |k: &str| match identity.claims.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let (repo, run, attempt) = (claim("repository"), claim("run_id"), claim("run_attempt"));
        let invocation_id = if repo.is_empty() || run.is_empty() {
            // Not a GitHub Actions token: the token's own id names the run.
            format!("{id}#{}", identity.token.hex())
        } else {
            format!(
                "{}/{repo}/actions/runs/{run}/attempts/{}",
                server_url.trim_end_matches('/'),
                if attempt.is_empty() { "1" } else { &attempt }
            )
        };
        Ok(BuilderRun {
            id,
            version: [("release-lane".to_string(), lane_version.to_string())].into(),
            invocation_id,
            identity: Some(identity),
        })
    }

    /// True for the local builder (never trusted for a registry).
    pub fn is_local(&self) -> bool {
        self.id == LOCAL_BUILDER_ID
    }
}

/// One input artifact of a build, as `resolvedDependencies` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The source commit: `git+URL@SHA`, digest `gitCommit` (40 hex digits).
    Source { url: String, commit: String },
    /// A `.deb`, by its sha256 (the lock's).
    Deb {
        name: String,
        version: String,
        arch: String,
        distro: Option<String>,
        sha256: Digest,
    },
    /// A crate compiled into a binary of the image; sha256 of the `.crate`
    /// (Cargo.lock's `checksum`). Workspace and path crates are covered by
    /// the source commit and are not listed.
    Crate {
        name: String,
        version: String,
        sha256: Digest,
    },
    /// A Python wheel (python.lock's sha256).
    Wheel {
        name: String,
        version: String,
        sha256: Digest,
    },
    /// A base image by manifest digest: `repository` is
    /// `HOST[:PORT]/PATH/NAME` for a pulled base, the bare name for a base
    /// the lane built itself.
    BaseImage {
        repository: String,
        digest: Digest,
        tag: Option<String>,
    },
    /// A lockfile or policy file of the repository, by path.
    File { path: String, sha256: Digest },
}

impl Input {
    /// The ResourceDescriptor of this input.
    pub fn descriptor(&self) -> Result<Value> {
        let sha = |d: &Digest| json!({ "sha256": d.hex() });
        Ok(match self {
            Input::Source { url, commit } => {
                if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "source commit {commit:?} is not a 40-digit git commit id; pass the full `git rev-parse HEAD`"
                    );
                }
                json!({ "uri": format!("git+{url}@{commit}"), "digest": { "gitCommit": commit.to_ascii_lowercase() } })
            }
            Input::Deb {
                name,
                version,
                arch,
                distro,
                sha256,
            } => json!({
                "name": format!("{name}_{version}_{arch}.deb"),
                "uri": purl::deb(name, version, arch, distro.as_deref())?,
                "digest": sha(sha256),
            }),
            Input::Crate {
                name,
                version,
                sha256,
            } => json!({
                "name": format!("{name}-{version}.crate"),
                "uri": purl::cargo(name, version, None)?,
                "digest": sha(sha256),
            }),
            Input::Wheel {
                name,
                version,
                sha256,
            } => json!({
                "uri": purl::pypi(name, version)?,
                "digest": sha(sha256),
            }),
            Input::BaseImage {
                repository,
                digest,
                tag,
            } => json!({
                "uri": purl::oci(repository, digest, tag.as_deref())?,
                "digest": sha(digest),
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
            }),
            Input::File { path, sha256 } => json!({ "name": path, "digest": sha(sha256) }),
        })
    }
}

/// The subject of a statement: the image's name and manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `REGISTRY/REPOSITORY` (or `local/REPOSITORY`).
    pub name: String,
    pub digest: Digest,
}

fn subject(s: &Subject) -> Value {
    json!([{ "name": s.name, "digest": { "sha256": s.digest.hex() } }])
}

/// Everything the provenance of one image records.
#[derive(Debug, Clone)]
pub struct ProvenanceInputs {
    pub subject: Subject,
    pub image: String,
    pub tags: Vec<String>,
    pub source_repository: String,
    pub revision: String,
    pub tree_clean: bool,
    pub policy_path: String,
    pub policy_digest: Digest,
    pub rustc: String,
    pub lane_version: String,
    pub encoder: String,
    /// The paths image.toml lets the no-secrets gate leave alone
    /// (`[secrets] allow`); recorded so that an allowance is never hidden.
    pub secrets_allowed: Vec<String>,
    /// Every input artifact; duplicates (same descriptor) are listed once.
    pub inputs: Vec<Input>,
    pub builder: BuilderRun,
    /// RFC 3339 (`2026-01-01T00:00:00Z`).
    pub started_on: String,
    pub finished_on: String,
}

/// The SLSA Provenance v1 statement of one image.
pub fn provenance_statement(i: &ProvenanceInputs) -> Result<Value> {
    let mut deps: Vec<Value> = Vec::with_capacity(i.inputs.len());
    for input in &i.inputs {
        let d = input.descriptor()?;
        if !deps.contains(&d) {
            deps.push(d);
        }
    }
    let mut builder = json!({ "id": i.builder.id });
    if !i.builder.version.is_empty() {
        builder["version"] = json!(i.builder.version);
    }
    let mut internal = json!({
        "rustc": i.rustc,
        "lane": { "version": i.lane_version, "revision": i.revision },
        "layerEncoder": i.encoder,
    });
    if let Some(identity) = &i.builder.identity {
        // The verified claims of the CI run's OIDC token, the key that
        // signed it and the token's digest (never the token).
        internal["identity"] = identity.to_json();
    }
    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": subject(&i.subject),
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "image": i.image,
                    "tags": i.tags,
                    "source": { "repository": i.source_repository, "revision": i.revision, "treeClean": i.tree_clean },
                    "policy": { "path": i.policy_path, "digest": { "sha256": i.policy_digest.hex() } },
                    "secretsAllowed": i.secrets_allowed,
                },
                "internalParameters": internal,
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": builder,
                "metadata": {
                    "invocationId": i.builder.invocation_id,
                    "startedOn": i.started_on,
                    "finishedOn": i.finished_on,
                },
            },
        },
    }))
}

/// The gate results of one image as an in-toto test-result v0.1 statement.
/// `configuration` is the release policy; `url` the CI run when the
/// invocation id is one. Required gates that did not pass are `failedTests`;
/// gates the policy does not require and that did not pass are `warnedTests`.
/// The `configuration` entry of a gate statement that names the digest of
/// the image's gate definitions (`crate::reuse::definitions`).
pub const CONFIG_GATE_DEFINITIONS: &str = "gate-definitions";
/// The `configuration` entry that names the commit the image-bound gates
/// ran on (an earlier commit's when they were carried over).
pub const CONFIG_REVISION: &str = "image-gates-revision";
/// The `configuration` entry that names the image's input key (issue 25,
/// point 7): the signed statement that this digest was built from those
/// inputs, which lets a fresh runner take the digest without building.
pub const CONFIG_INPUT_KEY: &str = "image-input-key";

/// What the image-bound gates of a statement were run against: the gate
/// definitions and the commit they ran on. Lets a later release of the
/// same digest carry them over (`crate::reuse`).
#[derive(Debug, Clone)]
pub struct GateBasis {
    pub definitions: Digest,
    pub revision: String,
    /// The image's input key, when the build knew it.
    pub input_key: Option<Digest>,
}

pub fn gate_statement(
    subject_: &Subject,
    decision: &Decision,
    policy_path: &str,
    policy_digest: &Digest,
    run_url: Option<&str>,
    basis: Option<&GateBasis>,
) -> Value {
    let pick = |f: &dyn Fn(&crate::gates::GateResult) -> bool| -> Vec<String> {
        decision
            .gates
            .iter()
            .filter(|g| f(g))
            .map(|g| g.gate.to_string())
            .collect()
    };
    let required = |g: &crate::gates::GateResult| decision.required.contains(&g.gate);
    let mut predicate = json!({
        "result": if decision.accepted { "PASSED" } else { "FAILED" },
        "configuration": [{ "name": policy_path, "digest": { "sha256": policy_digest.hex() } }],
        "passedTests": pick(&|g| g.state == GateState::Passed),
        "warnedTests": pick(&|g| g.state != GateState::Passed && !required(g)),
        "failedTests": pick(&|g| g.state != GateState::Passed && required(g)),
    });
    if let Some(u) = run_url.filter(|u| u.starts_with("https://")) {
        predicate["url"] = json!(u);
    }
    if let Some(b) = basis {
        let config = predicate["configuration"]
            .as_array_mut()
            .expect("configuration is a list");
        config.push(json!({
            "name": CONFIG_GATE_DEFINITIONS,
            "digest": { "sha256": b.definitions.hex() },
        }));
        if b.revision.len() == 40 && b.revision.bytes().all(|c| c.is_ascii_hexdigit()) {
            config.push(json!({
                "name": CONFIG_REVISION,
                "digest": { "gitCommit": b.revision },
            }));
        }
        if let Some(k) = &b.input_key {
            config.push(json!({
                "name": CONFIG_INPUT_KEY,
                "digest": { "sha256": k.hex() },
            }));
        }
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject(subject_),
        "predicateType": TEST_RESULT_V01,
        "predicate": predicate,
    })
}

/// Every input whose package URL (or name, for files) and sha256 are not in
/// the statement's `resolvedDependencies`: for a gate that checks each
/// `.deb` of the lock is declared.
pub fn undeclared_inputs(statement: &Value, expected: &[Input]) -> Vec<String> {
    let deps = statement
        .pointer("/predicate/buildDefinition/resolvedDependencies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for input in expected {
        match input.descriptor() {
            Ok(d) => {
                let key = d.get("uri").or_else(|| d.get("name")).cloned();
                let found = deps.iter().any(|x| {
                    (x.get("uri").or_else(|| x.get("name")).cloned() == key)
                        && x["digest"] == d["digest"]
                });
                if !found {
                    out.push(
                        key.and_then(|k| k.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    );
                }
            }
            Err(e) => out.push(format!("{e:#}")),
        }
    }
    out
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
    use crate::testing::{decision as sample_decision, provenance_inputs as sample_inputs};
    use serde_json::json;

    #[test]
    fn provenance_lists_every_input_with_purl_and_digest() {
        let i = sample_inputs();
        let s = provenance_statement(&i).unwrap();
        let deps = s["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert_eq!(deps.len(), i.inputs.len());
        assert_eq!(
            deps[3]["uri"],
            "pkg:deb/debian/base-files@12.4%2Bdeb12u15?arch=amd64"
        );
        assert_eq!(
            deps[3]["digest"]["sha256"],
            Digest::of(b"base-files.deb").hex()
        );
        assert_eq!(
            deps[0]["uri"],
            format!("git+{LANE_PROJECT}@0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(undeclared_inputs(&s, &i.inputs), Vec::<String>::new());
        // No field outside what SLSA v1 defines on the builder.
        let builder = s["predicate"]["runDetails"]["builder"].as_object().unwrap();
        let mut keys: Vec<&str> = builder.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["id", "version"]);
        assert_eq!(builder["id"], LOCAL_BUILDER_ID);
    }

    #[test]
    fn a_missing_deb_is_named() {
        let i = sample_inputs();
        let mut fewer = i.clone();
        fewer.inputs.remove(4);
        let s = provenance_statement(&fewer).unwrap();
        assert_eq!(
            undeclared_inputs(&s, &i.inputs),
            ["pkg:deb/debian/tzdata@2025b-0%2Bdeb12u2?arch=all"]
        );
    }

    #[test]
    fn a_short_commit_is_refused_with_the_fix() {
        let mut i = sample_inputs();
        i.inputs[0] = Input::Source {
            url: "https://x".into(),
            commit: "0123".into(),
        };
        let e = provenance_statement(&i).unwrap_err().to_string();
        assert!(e.contains("git rev-parse HEAD"), "{e}");
    }

    #[test]
    fn gate_statement_separates_failed_and_warned() {
        let s = gate_statement(
            &sample_inputs().subject,
            &sample_decision(),
            "ci/release-policy.toml",
            &Digest::of(b"policy"),
            Some("https://ci.example.com/org/repo/actions/runs/42/attempts/1"),
            None,
        );
        let p = &s["predicate"];
        assert_eq!(p["result"], "FAILED");
        assert_eq!(p["failedTests"], json!(["smoke"]));
        assert_eq!(p["warnedTests"], json!(["no-unused-packages"]));
        assert_eq!(p["passedTests"], json!(["no-drift"]));
        assert_eq!(
            p["url"],
            "https://ci.example.com/org/repo/actions/runs/42/attempts/1"
        );
    }

    #[test]
    fn a_ci_builder_is_its_verified_workflow_identity() {
        let identity = crate::testing::ci_identity(
            "https://ci.example.com/org/repo/.github/workflows/release.yml@refs/heads/main",
        );
        let b = BuilderRun::ci("https://ci.example.com", identity.clone(), "0.1.0").unwrap();
        assert!(!b.is_local());
        assert_eq!(
            b.id,
            "https://ci.example.com/org/repo/.github/workflows/release.yml@refs/heads/main"
        );
        assert_eq!(
            b.invocation_id,
            "https://ci.example.com/org/repo/actions/runs/42/attempts/1"
        );
        let mut i = sample_inputs();
        i.builder = b;
        let s = provenance_statement(&i).unwrap();
        let recorded = &s["predicate"]["buildDefinition"]["internalParameters"]["identity"];
        assert_eq!(
            recorded["claims"]["job_workflow_ref"],
            "org/repo/.github/workflows/release.yml@refs/heads/main"
        );
        assert_eq!(recorded["issuer"], crate::identity::GITHUB_ISSUER);
        assert_eq!(recorded["token"]["digest"]["sha256"], identity.token.hex());
        assert_eq!(
            recorded["key"]["digest"]["sha256"],
            identity.key.thumbprint.hex()
        );
        assert!(BuilderRun::local("0.1.0", None).is_local());
        assert!(
            sample_inputs().builder.identity.is_none()
                && provenance_statement(&sample_inputs()).unwrap()["predicate"]["buildDefinition"]
                    ["internalParameters"]
                    .get("identity")
                    .is_none()
        );
    }
}
