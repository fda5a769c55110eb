//! Release gates and the release policy. Pure: evidence in, decision out.
//!
//! The lane has a built-in set of required gates ([`BUILT_IN`]). The policy
//! file (`ci/release-policy.toml`) can add gates; it cannot remove or
//! downgrade a built-in one, and there is no warn-only state for a required
//! gate. A required gate with no result is `missing`, and missing counts as
//! failed.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every gate the lane knows. Serialised (and written in the policy) as its
/// kebab-case name: `source-state`, `no-drift`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateName {
    SourceState,
    PinnedInputs,
    Reproducible,
    NoDrift,
    Smoke,
    PublishCrossCheck,
    ProvenanceComplete,
    SbomComplete,
    AuthoritativeBuilder,
    NoUnusedPackages,
    SecurityUpdates,
    NoSecrets,
}

/// Gates every release must pass, whatever the policy says.
pub const BUILT_IN: &[GateName] = &[
    GateName::SourceState,
    GateName::PinnedInputs,
    GateName::Reproducible,
    GateName::NoDrift,
    GateName::Smoke,
    GateName::PublishCrossCheck,
    GateName::ProvenanceComplete,
    GateName::SbomComplete,
    GateName::NoSecrets,
];

/// Gates the lane knows that a policy may add, with what each checks.
pub const OPTIONAL: &[(GateName, &str)] = &[
    (
        GateName::AuthoritativeBuilder,
        "the builder is a CI workflow identity the lane verified (OIDC token) and the policy trusts, not a local run",
    ),
    (
        GateName::NoUnusedPackages,
        "no curated package is unused (drift report)",
    ),
    (
        GateName::SecurityUpdates,
        "no Debian security update of a locked package has been offered for longer than [gates] security_update_max_age_days (set that to add this gate)",
    ),
];

impl GateName {
    /// Every gate, built-in ones first.
    pub fn all() -> impl Iterator<Item = GateName> {
        BUILT_IN
            .iter()
            .copied()
            .chain(OPTIONAL.iter().map(|(g, _)| *g))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GateName::SourceState => "source-state",
            GateName::PinnedInputs => "pinned-inputs",
            GateName::Reproducible => "reproducible",
            GateName::NoDrift => "no-drift",
            GateName::Smoke => "smoke",
            GateName::PublishCrossCheck => "publish-cross-check",
            GateName::ProvenanceComplete => "provenance-complete",
            GateName::SbomComplete => "sbom-complete",
            GateName::AuthoritativeBuilder => "authoritative-builder",
            GateName::NoUnusedPackages => "no-unused-packages",
            GateName::SecurityUpdates => "security-updates",
            GateName::NoSecrets => "no-secrets",
        }
    }

    pub fn is_built_in(self) -> bool {
        BUILT_IN.contains(&self)
    }
}

impl fmt::Display for GateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GateName {
    type Err = String;
    fn from_str(s: &str) -> Result<GateName, String> {
        GateName::all().find(|g| g.as_str() == s).ok_or_else(|| {
            format!(
                "unknown gate {s:?}; known gates: {}",
                GateName::all()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

impl PartialEq<str> for GateName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for GateName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    Passed,
    Failed,
    Missing,
}

impl fmt::Display for GateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GateState::Passed => "passed",
            GateState::Failed => "failed",
            GateState::Missing => "missing",
        })
    }
}

/// The outcome of one gate with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: GateName,
    pub state: GateState,
    /// One line for humans.
    pub summary: String,
    /// Machine-readable evidence (digests compared, logs, reports).
    pub evidence: serde_json::Value,
    /// Carried over from earlier evidence of the same digest instead of run
    /// again (`crate::reuse`); absent when the gate ran in this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reused>,
}

/// Where a carried-over gate result was proved: the signed gate statement
/// (the digest of the artifact that carries it) and the commit it was
/// proved on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reused {
    pub from: String,
    pub revision: String,
}

impl GateResult {
    fn new(gate: GateName, state: GateState, summary: String, evidence: Value) -> GateResult {
        GateResult {
            gate,
            state,
            summary,
            evidence,
            reused: None,
        }
    }

    pub fn passed(gate: GateName, summary: impl Into<String>, evidence: Value) -> GateResult {
        Self::new(gate, GateState::Passed, summary.into(), evidence)
    }

    pub fn failed(gate: GateName, summary: impl Into<String>, evidence: Value) -> GateResult {
        Self::new(gate, GateState::Failed, summary.into(), evidence)
    }

    pub fn check(
        gate: GateName,
        ok: bool,
        summary: impl Into<String>,
        evidence: serde_json::Value,
    ) -> GateResult {
        if ok {
            Self::passed(gate, summary, evidence)
        } else {
            Self::failed(gate, summary, evidence)
        }
    }
}

/// The decision over all gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub accepted: bool,
    /// The gates that had to pass; the others in `gates` are information.
    pub required: Vec<GateName>,
    /// Every required gate with its final state (missing filled in).
    pub gates: Vec<GateResult>,
    /// Every reason for rejection, not only the first.
    pub failures: Vec<String>,
}

/// Decides over `results` for the `required` gates. Results for gates that
/// are not required are kept as information and never reject.
pub fn decide(required: &[GateName], results: &[GateResult]) -> Decision {
    let by_gate: BTreeMap<GateName, &GateResult> = results.iter().map(|r| (r.gate, r)).collect();
    let mut gates = Vec::new();
    let mut failures = Vec::new();
    for g in required {
        let r = match by_gate.get(g) {
            Some(r) => (*r).clone(),
            None => GateResult {
                gate: *g,
                state: GateState::Missing,
                summary: "the gate did not run".into(),
                evidence: serde_json::Value::Null,
                reused: None,
            },
        };
        if r.state != GateState::Passed {
            failures.push(format!("{}: {} ({})", r.gate, r.state, r.summary));
        }
        gates.push(r);
    }
    for r in results {
        if !required.contains(&r.gate) {
            gates.push(r.clone());
        }
    }
    Decision {
        accepted: failures.is_empty(),
        required: required.to_vec(),
        gates,
        failures,
    }
}

/// The release policy, from `ci/release-policy.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Gates required in addition to the built-in ones.
    pub extra_required: Vec<GateName>,
    /// Workflow identities whose releases are authoritative: patterns of
    /// builder ids `https://SERVER/OWNER/REPO/PATH@REF` (`*` in the ref
    /// only; [`crate::identity::matches`]). Empty: no CI identity is trusted.
    pub trusted_builders: Vec<String>,
    /// The OIDC issuer whose ID tokens prove a CI identity.
    pub issuer: String,
    /// The audience the lane requests, and requires, in the token.
    pub audience: String,
    /// Whether a local (non-CI) run may be accepted into a registry.
    pub require_authoritative_for_registry: bool,
    /// PEM public keys trusted to sign evidence.
    pub trusted_keys: Vec<String>,
    /// What of the source state the image itself carries (`[identity]
    /// stamp`); by default nothing, so its digest is a function of its
    /// inputs alone.
    pub stamp: Stamp,
    /// `[gates] security_update_max_age_days`: when set, the
    /// `security-updates` gate is required (`crate::security_age`).
    pub security_update_max_age_days: Option<u32>,
}

/// `[identity] stamp` of the policy: what of the commit an image carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stamp {
    /// Nothing: the commit lives in the provenance and the release record
    /// only, and a commit that changes no input keeps the digest.
    #[default]
    None,
    /// The manifest annotation `org.opencontainers.image.revision` names
    /// the commit: every commit then gives every image a new digest.
    Revision,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            extra_required: Vec::new(),
            trusted_builders: Vec::new(),
            issuer: crate::identity::GITHUB_ISSUER.into(),
            audience: crate::identity::DEFAULT_AUDIENCE.into(),
            require_authoritative_for_registry: true,
            trusted_keys: Vec::new(),
            stamp: Stamp::None,
            security_update_max_age_days: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    #[serde(default)]
    gates: RawGates,
    #[serde(default)]
    builder: RawBuilder,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    identity: RawIdentity,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    stamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGates {
    #[serde(default)]
    require: Vec<String>,
    security_update_max_age_days: Option<u32>,
    // The following keys exist only to be refused with a clear message.
    #[serde(default)]
    optional: Vec<String>,
    #[serde(default)]
    warn: Vec<String>,
    #[serde(default)]
    skip: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBuilder {
    #[serde(default)]
    trusted: Vec<String>,
    issuer: Option<String>,
    audience: Option<String>,
    require_authoritative_for_registry: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    #[serde(default)]
    trusted_keys: Vec<String>,
}

/// Parses the policy file. `path` is for messages.
pub fn parse_policy(path: &str, text: &str) -> Result<Policy> {
    let raw: RawPolicy = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map_or(path.to_string(), |l| format!("{path}:{l}"));
            bail!("{at}: {}", e.message().trim_end_matches('.'));
        }
    };
    if raw.version != 1 {
        bail!(
            "{path}: policy version {} is not supported; write version = 1",
            raw.version
        );
    }
    for (key, names) in [
        ("optional", &raw.gates.optional),
        ("warn", &raw.gates.warn),
        ("skip", &raw.gates.skip),
    ] {
        if let Some(name) = names.iter().next() {
            if BUILT_IN.iter().any(|g| g == name.as_str()) {
                bail!(
                    "{path}: gates.{key} lists {name:?}, a built-in required gate; the policy can add gates but cannot make a built-in gate optional, warn-only or skipped"
                );
            }
            bail!(
                "{path}: gates.{key} is not supported: a gate is either required (gates.require) or not listed; there is no warn-only mode"
            );
        }
    }
    let mut extra_required = Vec::new();
    for name in raw.gates.require {
        let gate: GateName = name
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{path}: gates.require lists {e}"))?;
        if gate.is_built_in() {
            continue; // already required
        }
        if !extra_required.contains(&gate) {
            extra_required.push(gate);
        }
    }
    match raw.gates.security_update_max_age_days {
        Some(_) if !extra_required.contains(&GateName::SecurityUpdates) => {
            extra_required.push(GateName::SecurityUpdates);
        }
        None if extra_required.contains(&GateName::SecurityUpdates) => bail!(
            "{path}: gates.require lists \"security-updates\" but gates.security_update_max_age_days is not set; write the number of days a security update may be offered before a release is rejected (for example security_update_max_age_days = 7)"
        ),
        _ => {}
    }
    if raw.builder.require_authoritative_for_registry == Some(false) {
        bail!(
            "{path}: builder.require_authoritative_for_registry = false would let a local run release to a registry; remove it (use the local store for development)"
        );
    }
    let issuer = raw
        .builder
        .issuer
        .unwrap_or_else(|| crate::identity::GITHUB_ISSUER.into());
    crate::identity::check_endpoint(&issuer).map_err(|e| {
        anyhow::anyhow!(
            "{path}: builder.issuer {e}; write the OIDC issuer whose tokens prove a CI run (GitHub Actions: {})",
            crate::identity::GITHUB_ISSUER
        )
    })?;
    let audience = raw
        .builder
        .audience
        .unwrap_or_else(|| crate::identity::DEFAULT_AUDIENCE.into());
    if audience.trim().is_empty() {
        bail!(
            "{path}: builder.audience is empty; write the audience the lane requests (for example \"{}\")",
            crate::identity::DEFAULT_AUDIENCE
        );
    }
    for t in &raw.builder.trusted {
        crate::identity::check_trusted_pattern(t)
            .map_err(|e| anyhow::anyhow!("{path}: builder.trusted: {e}"))?;
    }
    let stamp = match raw.identity.stamp.as_deref() {
        None | Some("none") => Stamp::None,
        Some("revision") => Stamp::Revision,
        Some(other) => bail!(
            "{path}: identity.stamp = {other:?} is not known; write \"none\" (the default: the digest depends on the inputs alone) or \"revision\" (the manifest names the commit; every commit then changes every digest)"
        ),
    };
    Ok(Policy {
        extra_required,
        trusted_builders: raw.builder.trusted,
        issuer,
        audience,
        require_authoritative_for_registry: true,
        trusted_keys: raw.signing.trusted_keys,
        stamp,
        security_update_max_age_days: raw.gates.security_update_max_age_days,
    })
}

impl Policy {
    /// The gates required for one release: the built-in ones, the policy's
    /// additions, and `authoritative-builder` when releasing to a registry.
    pub fn required(&self, to_registry: bool) -> Vec<GateName> {
        let mut r: Vec<GateName> = BUILT_IN.to_vec();
        r.extend(self.extra_required.iter().copied());
        if to_registry
            && self.require_authoritative_for_registry
            && !r.contains(&GateName::AuthoritativeBuilder)
        {
            r.push(GateName::AuthoritativeBuilder);
        }
        r
    }
}

pub const POLICY_PATH: &str = "ci/release-policy.toml";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_passed() -> Vec<GateResult> {
        BUILT_IN
            .iter()
            .map(|g| GateResult::passed(*g, "ok", json!({})))
            .collect()
    }

    #[test]
    fn all_required_passed_is_accepted() {
        let d = decide(&Policy::default().required(false), &all_passed());
        assert!(d.accepted, "{d:?}");
        assert!(d.failures.is_empty());
    }

    #[test]
    fn missing_counts_as_failed_and_every_failure_is_listed() {
        let mut results = all_passed();
        results.retain(|r| r.gate != GateName::Smoke);
        results
            .iter_mut()
            .find(|r| r.gate == GateName::NoDrift)
            .unwrap()
            .state = GateState::Failed;
        results
            .iter_mut()
            .find(|r| r.gate == GateName::Reproducible)
            .unwrap()
            .state = GateState::Failed;
        let d = decide(&Policy::default().required(false), &results);
        assert!(!d.accepted);
        assert_eq!(
            d.failures,
            [
                "reproducible: failed (ok)",
                "no-drift: failed (ok)",
                "smoke: missing (the gate did not run)"
            ]
        );
        assert_eq!(
            d.gates
                .iter()
                .find(|g| g.gate == GateName::Smoke)
                .unwrap()
                .state,
            GateState::Missing
        );
    }

    #[test]
    fn registry_releases_need_an_authoritative_builder() {
        let d = decide(&Policy::default().required(true), &all_passed());
        assert!(!d.accepted);
        assert_eq!(
            d.failures,
            ["authoritative-builder: missing (the gate did not run)"]
        );
    }

    #[test]
    fn policy_cannot_downgrade_built_in_gates() {
        for text in [
            "version = 1\n[gates]\noptional = [\"smoke\"]\n",
            "version = 1\n[gates]\nwarn = [\"no-drift\"]\n",
            "version = 1\n[gates]\nskip = [\"reproducible\"]\n",
        ] {
            let e = parse_policy("ci/release-policy.toml", text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("a built-in required gate"), "{e}");
            assert!(
                e.contains("cannot make a built-in gate optional, warn-only or skipped"),
                "{e}"
            );
        }
        let e = parse_policy(
            "p.toml",
            "version = 1\n[builder]\nrequire_authoritative_for_registry = false\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("would let a local run release"), "{e}");
        let e = parse_policy("p.toml", "version = 1\n[gates]\nsmoke = \"warn\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:3: unknown field `smoke`"), "{e}");
    }

    #[test]
    fn policy_adds_gates() {
        let p = parse_policy(
            "p.toml",
            "version = 1\n[gates]\nrequire = [\"no-unused-packages\", \"smoke\"]\n",
        )
        .unwrap();
        assert_eq!(p.extra_required, [GateName::NoUnusedPackages]);
        assert!(p.required(false).contains(&GateName::NoUnusedPackages));
        let e = parse_policy("p.toml", "version = 1\n[gates]\nrequire = [\"vibes\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown gate \"vibes\""), "{e}");
        assert!(e.contains("known gates: source-state,"), "{e}");
        assert_eq!(
            GateName::all().count(),
            12,
            "every gate is built-in or optional"
        );
        for g in GateName::all() {
            assert_eq!(g.as_str().parse::<GateName>(), Ok(g));
            assert_eq!(serde_json::to_value(g).unwrap(), json!(g.as_str()));
        }
    }

    #[test]
    fn a_security_age_limit_adds_its_gate_and_the_gate_needs_the_limit() {
        let p = parse_policy(
            "p.toml",
            "version = 1\n[gates]\nsecurity_update_max_age_days = 7\n",
        )
        .unwrap();
        assert_eq!(p.security_update_max_age_days, Some(7));
        assert!(p.required(false).contains(&GateName::SecurityUpdates));
        assert!(
            !Policy::default()
                .required(true)
                .contains(&GateName::SecurityUpdates),
            "off by default"
        );
        let e = parse_policy(
            "p.toml",
            "version = 1\n[gates]\nrequire = [\"security-updates\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("security_update_max_age_days is not set"), "{e}");
    }

    #[test]
    fn the_repository_policy_parses() {
        let p = parse_policy(
            "ci/release-policy.toml",
            include_str!("../../ci/release-policy.toml"),
        )
        .unwrap();
        assert!(p.required(true).contains(&GateName::AuthoritativeBuilder));
        assert_eq!(p.issuer, crate::identity::GITHUB_ISSUER);
    }

    #[test]
    fn the_builder_table_names_issuer_audience_and_trusted_workflows() {
        let p = parse_policy(
            "p.toml",
            "version = 1\n[builder]\nissuer = \"http://127.0.0.1:9999\"\naudience = \"lane\"\ntrusted = [\"https://ci.example.com/o/r/.github/workflows/r.yml@refs/tags/v*\"]\n",
        )
        .unwrap();
        assert_eq!(p.issuer, "http://127.0.0.1:9999");
        assert_eq!(p.audience, "lane");
        let p = parse_policy("p.toml", "version = 1\n").unwrap();
        assert_eq!(p.issuer, crate::identity::GITHUB_ISSUER);
        assert_eq!(p.audience, crate::identity::DEFAULT_AUDIENCE);
        assert!(p.trusted_builders.is_empty());
        for (text, want) in [
            (
                "issuer = \"http://issuer.example.com\"",
                "builder.issuer \"http://issuer.example.com\" is plain http",
            ),
            ("audience = \" \"", "builder.audience is empty"),
            (
                "trusted = [\"https://ci.example.com/o/*@refs/heads/main\"]",
                "only the ref may be a pattern",
            ),
            (
                "trusted = [\"o/r/.github/workflows/r.yml@refs/heads/main\"]",
                "not an https URI",
            ),
        ] {
            let e = parse_policy("p.toml", &format!("version = 1\n[builder]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("p.toml: builder."), "{e}");
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}

/// Hostile `ci/release-policy.toml` files (docs/fault-matrix-parsers.md): no panic, and
/// every error names the file.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated_text};
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("../../ci/release-policy.toml");

    fn check(text: &str) -> Result<(), TestCaseError> {
        if let Err(e) = parse_policy(POLICY_PATH, text) {
            clear_error(&e, POLICY_PATH)?;
        }
        Ok(())
    }

    #[test]
    fn the_sample_parses() {
        parse_policy(POLICY_PATH, SAMPLE).unwrap();
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn policy_arbitrary_text(text in any::<String>()) {
            check(&text)?;
        }

        #[test]
        fn policy_mutated(text in mutated_text(SAMPLE)) {
            check(&text)?;
        }
    }
}
