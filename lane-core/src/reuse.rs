//! What a digest proved is not proven again. Pure: the candidate digest,
//! the envelopes attached to it in the target store, the policy and the
//! image's gate definitions in; the proof to carry over, or every reason
//! there is none, out.
//!
//! A gate that depends only on the image's bytes and on the definitions of
//! the gates ([`IMAGE_BOUND`]: reproducible, no-drift, no-unused-packages,
//! smoke, sbom-complete) has the same outcome for the same digest. When the
//! digest already carries a gate statement of an accepted release, signed
//! by a key the policy trusts, made under the same policy (its digest) and
//! the same gate definitions ([`definitions`]), those gates are carried
//! over instead of run again. The commit-bound gates (source-state,
//! pinned-inputs, publish-cross-check, provenance-complete,
//! authoritative-builder) run every time, and every release signs its own
//! provenance binding its commit to the digest.

use serde_json::{Value, json};

use crate::evidence;
use crate::gates::{GateName, GateResult, POLICY_PATH, Policy, Reused};
use crate::id::Digest;
use crate::oci::canonical_json;
use crate::provenance::{
    CONFIG_GATE_DEFINITIONS, CONFIG_INPUT_KEY, CONFIG_REVISION, STATEMENT_TYPE, TEST_RESULT_V01,
};
use crate::signing::{self, SignatureCheck};
use crate::spec::ImageSpec;
use crate::verify::Envelope;

/// The gates whose outcome is a function of the image's bytes and of the
/// gate definitions alone.
pub const IMAGE_BOUND: &[GateName] = &[
    GateName::Reproducible,
    GateName::NoDrift,
    GateName::NoUnusedPackages,
    GateName::Smoke,
    GateName::SbomComplete,
    GateName::NoSecrets,
];

/// The digest of what the image-bound gates check besides the image's
/// bytes: the image's `[[smoke]]` list, its `[python]` table (the derived
/// smoke imports and the import analysis read it) and the lane's version
/// (the drift rules, the SBOM's shape). A change of any of these means no
/// carry-over. Positions in image.toml are left out: moving a table is no
/// change.
pub fn definitions(spec: &ImageSpec, lane_version: &str) -> Digest {
    let python = spec.python.as_ref().map(|p| {
        json!({
            "requirements": p.requirements,
            "app": p.app,
            "app_dir": p.app_dir,
            "modules": p.modules,
        })
    });
    let doc = json!({
        "lane": lane_version,
        "smoke": spec.smoke,
        "python": python,
        "secrets_allow": spec.secrets_allow,
        "smoke_user": spec.smoke_user,
    });
    // A JSON value of strings, numbers and lists always serialises.
    let bytes = canonical_json(&doc).map(|b| b.bytes).unwrap_or_default();
    Digest::of(&bytes)
}

/// An image's input key: the digest of the canonical JSON of everything
/// its bytes are made of (assembled by the build from its plan).
pub fn input_key(doc: &Value) -> Digest {
    let bytes = canonical_json(doc).map(|b| b.bytes).unwrap_or_default();
    Digest::of(&bytes)
}

/// The earlier proof of a digest's image-bound gates.
#[derive(Debug, Clone, PartialEq)]
pub struct Proof {
    pub reused: Reused,
    /// The gates the statement lists as passed.
    pub passed: Vec<GateName>,
    /// The image input key the statement names (`image-input-key`), when
    /// the earlier run knew it.
    pub input_key: Option<Digest>,
}

impl Proof {
    /// The carried-over result of `gate`: passed when the earlier statement
    /// lists it as passed, failed otherwise (an information-only gate that
    /// did not pass then does not pass now).
    pub fn carried(&self, gate: GateName) -> GateResult {
        let passed = self.passed.contains(&gate);
        let mut r = GateResult::check(
            gate,
            passed,
            format!(
                "carried over: {} on commit {} for this digest, under the same policy and gate definitions (gate statement {})",
                if passed { "passed" } else { "did not pass" },
                self.reused.revision,
                self.reused.from
            ),
            json!({ "reused": self.reused }),
        );
        r.reused = Some(self.reused.clone());
        r
    }
}

/// The newest gate statement attached to `digest` that can be carried
/// over, or why none can. A statement counts only when it is signed by a
/// key `policy` trusts, names exactly `digest`, reports an accepted
/// release (`PASSED`) in which every required image-bound gate passed, and
/// names `policy_digest` and `definitions` in its configuration. Unsigned,
/// untrusted and altered statements are never used, whatever they claim.
pub fn find(
    digest: &Digest,
    envelopes: &[Envelope],
    policy: &Policy,
    policy_digest: &Digest,
    definitions: &Digest,
) -> Result<Proof, Vec<String>> {
    let (trusted, _) = signing::trusted_keys(&policy.trusted_keys);
    if trusted.is_empty() {
        return Err(vec![format!(
            "{POLICY_PATH} trusts no signing key, so no earlier evidence can be trusted"
        )]);
    }
    let mut why = Vec::new();
    // Newest first: the referrers list in the order they were attached.
    for e in envelopes.iter().rev() {
        let what = format!("artifact {}", e.artifact);
        let Some(statement) = e.envelope["payload"]
            .as_str()
            .and_then(evidence::unbase64)
            .and_then(|p| crate::strict_json::parse(&p).ok())
        else {
            why.push(format!("{what}: not a JSON statement"));
            continue;
        };
        if statement["predicateType"] != TEST_RESULT_V01 {
            continue; // provenance, SBOM: not a gate statement
        }
        match signing::check_envelope(&e.envelope, &trusted) {
            SignatureCheck::Trusted(_) => {}
            SignatureCheck::Unsigned => {
                why.push(format!("{what}: unsigned"));
                continue;
            }
            SignatureCheck::Untrusted(w) => {
                why.push(format!("{what}: {}", w.join("; ")));
                continue;
            }
        }
        match proof(digest, &statement, policy, policy_digest, definitions) {
            Ok(reused) => {
                return Ok(Proof {
                    reused: Reused {
                        from: e.artifact.clone(),
                        revision: reused.0,
                    },
                    passed: reused.1,
                    input_key: reused.2,
                });
            }
            Err(w) => why.push(format!("{what}: {w}")),
        }
    }
    if why.is_empty() {
        why.push(format!("no gate statement is attached to {digest}"));
    }
    Err(why)
}

/// A trusted statement's revision and passed gates, if it proves `digest`
/// under this policy and these definitions.
fn proof(
    digest: &Digest,
    statement: &Value,
    policy: &Policy,
    policy_digest: &Digest,
    definitions: &Digest,
) -> Result<(String, Vec<GateName>, Option<Digest>), String> {
    if statement["_type"] != STATEMENT_TYPE {
        return Err(format!(
            "statement type {} is not {STATEMENT_TYPE}",
            statement["_type"]
        ));
    }
    let subjects = statement["subject"].as_array().cloned().unwrap_or_default();
    if subjects.is_empty()
        || subjects
            .iter()
            .any(|s| s["digest"]["sha256"].as_str() != Some(digest.hex()))
    {
        return Err(format!("its subject is not {digest}"));
    }
    let p = &statement["predicate"];
    if p["result"] != "PASSED" {
        return Err("a rejected release".into());
    }
    // The digest (algorithm `alg`) of the configuration entry `name`.
    let named = |name: &str, alg: &str| {
        p["configuration"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .and_then(|c| c["digest"][alg].as_str())
    };
    if named(POLICY_PATH, "sha256") != Some(policy_digest.hex()) {
        return Err(format!("made under another {POLICY_PATH}"));
    }
    if named(CONFIG_GATE_DEFINITIONS, "sha256") != Some(definitions.hex()) {
        return Err(
            "made with other gate definitions (the image's [[smoke]] list, its [python] table or the lane's version differ)"
                .into(),
        );
    }
    let revision = named(CONFIG_REVISION, "gitCommit")
        .ok_or("it names no source revision")?
        .to_string();
    let passed: Vec<GateName> = p["passedTests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    let required = policy.required(false);
    let unproved: Vec<&str> = IMAGE_BOUND
        .iter()
        .filter(|g| required.contains(g) && !passed.contains(g))
        .map(|g| g.as_str())
        .collect();
    if !unproved.is_empty() {
        return Err(format!("it does not show {} passed", unproved.join(", ")));
    }
    let input_key =
        named(CONFIG_INPUT_KEY, "sha256").and_then(|h| format!("sha256:{h}").parse().ok());
    Ok((revision, passed, input_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::{self, GateState, Policy};
    use crate::oci::canonical_json;
    use crate::provenance::{self, GateBasis, Subject};
    use crate::signing::Signer;
    use crate::testing::signer;

    const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

    fn digest() -> Digest {
        format!("sha256:{}", "a".repeat(64)).parse().unwrap()
    }

    fn policy(s: &Signer) -> Policy {
        Policy {
            trusted_keys: vec![s.public_pem().unwrap()],
            ..Policy::default()
        }
    }

    fn statement(result_ok: bool, policy_digest: &Digest, defs: &Digest) -> Value {
        let required = Policy::default().required(false);
        let results: Vec<_> = required
            .iter()
            .map(|g| gates::GateResult::check(*g, result_ok, "test", json!({})))
            .collect();
        let d = gates::decide(&required, &results);
        provenance::gate_statement(
            &Subject {
                name: "registry.test/x".into(),
                digest: digest(),
            },
            &d,
            POLICY_PATH,
            policy_digest,
            None,
            Some(&GateBasis {
                definitions: defs.clone(),
                revision: REVISION.into(),
                input_key: None,
            }),
        )
    }

    fn envelope(st: &Value, s: Option<&Signer>, artifact: &str) -> Envelope {
        Envelope {
            artifact: artifact.into(),
            annotated_predicate: None,
            envelope: signing::envelope(&canonical_json(st).unwrap().bytes, s),
        }
    }

    #[test]
    fn a_trusted_accepted_statement_under_the_same_policy_and_definitions_is_carried_over() {
        let s = signer(1);
        let (pd, defs) = (Digest::of(b"policy"), Digest::of(b"defs"));
        let ok = envelope(&statement(true, &pd, &defs), Some(&s), "sha256:ok");
        let p = find(&digest(), &[ok], &policy(&s), &pd, &defs).unwrap();
        assert_eq!(p.reused.from, "sha256:ok");
        assert_eq!(p.reused.revision, REVISION);
        let r = p.carried(GateName::Smoke);
        assert_eq!(r.state, GateState::Passed);
        assert_eq!(r.reused.as_ref().unwrap().revision, REVISION);
    }

    #[test]
    fn forged_rejected_or_differently_made_statements_are_never_carried_over() {
        let s = signer(1);
        let other = signer(2);
        let (pd, defs) = (Digest::of(b"policy"), Digest::of(b"defs"));
        let good = statement(true, &pd, &defs);
        let cases: Vec<(Envelope, &str)> = vec![
            (envelope(&good, None, "sha256:u"), "unsigned"),
            (envelope(&good, Some(&other), "sha256:o"), "does not trust"),
            (
                envelope(&statement(false, &pd, &defs), Some(&s), "sha256:r"),
                "a rejected release",
            ),
            (
                envelope(
                    &statement(true, &Digest::of(b"p2"), &defs),
                    Some(&s),
                    "sha256:p",
                ),
                "another ci/release-policy.toml",
            ),
            (
                envelope(
                    &statement(true, &pd, &Digest::of(b"d2")),
                    Some(&s),
                    "sha256:d",
                ),
                "other gate definitions",
            ),
            {
                let mut altered = envelope(&good, Some(&s), "sha256:a");
                let mut st = good.clone();
                st["predicate"]["passedTests"] = json!(["smoke"]);
                altered.envelope["payload"] =
                    json!(evidence::base64(&canonical_json(&st).unwrap().bytes));
                (altered, "does not verify")
            },
            {
                let mut st = good.clone();
                st["subject"][0]["digest"]["sha256"] = json!("b".repeat(64));
                (envelope(&st, Some(&s), "sha256:s"), "its subject is not")
            },
        ];
        for (e, want) in cases {
            let why =
                find(&digest(), std::slice::from_ref(&e), &policy(&s), &pd, &defs).expect_err(want);
            assert!(why.iter().any(|w| w.contains(want)), "{want}: {why:?}");
        }
        // No key trusted: nothing can be carried over.
        let e = envelope(&good, Some(&s), "sha256:ok");
        assert!(find(&digest(), &[e], &Policy::default(), &pd, &defs).is_err());
    }

    #[test]
    fn the_definitions_cover_the_smoke_list_the_python_table_and_the_lane_version() {
        let text = "name = \"x\"\nrepository = \"platform/x\"\n\n[[smoke]]\nname = \"runs\"\ncommand = [\"/x\"]\n";
        let spec = crate::spec::parse("images/x/image.toml", text).unwrap();
        let d = definitions(&spec, "0.1.0");
        assert_eq!(d, definitions(&spec, "0.1.0"));
        assert_ne!(d, definitions(&spec, "0.2.0"));
        let mut changed = spec.clone();
        changed.smoke[0].command.push("--version".into());
        assert_ne!(d, definitions(&changed, "0.1.0"));
        let mut retagged = spec.clone();
        retagged.tags.clear();
        assert_eq!(
            d,
            definitions(&retagged, "0.1.0"),
            "tags are no gate definition"
        );
    }
}
