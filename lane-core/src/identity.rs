//! The CI builder identity as a verified fact: an OIDC ID token checked
//! against the issuer's keys, its claims against the checkout, its workflow
//! against the policy. Pure: the token, the issuer's documents, the git
//! facts and the time come in as values (fetching them is
//! `xtask::adapters::oidc`).
//!
//! - The signature is checked by `jsonwebtoken` with the key the header's
//!   `kid` names in the issuer's JWKS, and only RS256 or ES256: `none`, HMAC
//!   and every other algorithm are refused before any key is looked at.
//! - Issuer, audience, `exp`, `nbf` and `iat` (with [`LEEWAY_SECS`]) are
//!   checked here, each with its own message (the clock skew is shown).
//! - `sha`, `repository` and `ref` must be the checkout's; the workflow
//!   identity `SERVER/job_workflow_ref` must match a `[builder] trusted`
//!   pattern of the policy.
//! - The token itself is never kept: [`CiIdentity`] holds its claims, the
//!   sha256 of the token and the RFC 7638 thumbprint of the key that signed it.

use std::fmt;

use anyhow::{Result, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::id::Digest;

/// The policy file, for messages (`gates::POLICY_PATH`; gates imports this
/// module for the `[builder]` rules, so the path is repeated here, and a
/// test keeps the two equal).
const POLICY_PATH: &str = "ci/release-policy.toml";

/// GitHub Actions' token issuer: the policy's default `[builder] issuer`.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// The audience the lane requests when the policy names none.
pub const DEFAULT_AUDIENCE: &str = "release-lane";
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 60;
/// Where the trust setup and every diagnosis are explained.
pub const DOC: &str = "docs/identity.md";

/// The algorithms the lane accepts (JWS names).
pub const ALGORITHMS: &[&str] = &["RS256", "ES256"];

/// An OIDC endpoint the lane may talk to: `https://`, or plain `http://` on
/// a loopback address only (a test issuer).
pub fn check_endpoint(url: &str) -> std::result::Result<(), String> {
    // `http://[::1]@HOST/` connects to HOST: userinfo would let a URL look
    // like loopback (or like another host) while naming another one.
    let authority = url.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or_default()
    });
    if authority.contains('@') {
        return Err(format!(
            "{url:?} holds userinfo (user@host): refused, it hides which host is reached; write the URL without it"
        ));
    }
    if let Some(rest) = url.strip_prefix("https://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{url:?} names no host"));
        }
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if matches!(name, "127.0.0.1" | "localhost" | "::1") {
            return Ok(());
        }
        return Err(format!(
            "{url:?} is plain http: only https is trusted (plain http only on a loopback address, for a test issuer)"
        ));
    }
    Err(format!("{url:?} is not an https URL"))
}

/// What is wrong with a token's time claims at `now`: `exp` missing or
/// passed, `nbf` or `iat` in the future (each with [`LEEWAY_SECS`]), or any
/// of them not an integer (a float `nbf` a year ahead must not read as
/// absent and skip the check).
fn time_problems(claims: &Map<String, Value>, now: i64) -> Vec<String> {
    let mut problems = Vec::new();
    // NumericDate claims are integers: a float `nbf` a year ahead must not
    // read as absent and skip the check.
    for k in ["exp", "nbf", "iat"] {
        if claims.get(k).is_some_and(|v| v.as_i64().is_none()) {
            problems.push(format!(
                "the token's {k} claim is {}, not an integer number of seconds: refused",
                claims[k]
            ));
        }
    }
    let number = |k: &str| claims.get(k).and_then(Value::as_i64);
    match number("exp") {
        None => problems.push("the token has no exp (expiry) claim: refused".into()),
        Some(exp) if now > exp + LEEWAY_SECS => problems.push(format!(
            "the token expired at {} ({} s before this machine's clock, {}; leeway {LEEWAY_SECS} s): request a fresh token; if it was just issued, this machine's clock is {} s ahead, so fix its time (NTP)",
            time(exp),
            now - exp,
            time(now),
            now - exp
        )),
        Some(_) => {}
    }
    // `nbf`, else `iat`: one message for a token from the future.
    let future = [("nbf", "is not valid before"), ("iat", "was issued at")]
        .into_iter()
        .find_map(|(claim, what)| {
            number(claim)
                .filter(|t| *t > now + LEEWAY_SECS)
                .map(|t| (claim, what, t))
        });
    if let Some((claim, what, t)) = future {
        problems.push(format!(
            "the token {what} {} ({claim}), {} s after this machine's clock ({}; leeway {LEEWAY_SECS} s): this machine's clock is behind the issuer's by about {} s; fix its time (NTP)",
            time(t),
            t - now,
            time(now),
            t - now
        ));
    }
    problems
}

/// Checks one `[builder] trusted` entry: a workflow identity URI
/// `https://SERVER/OWNER/REPO/PATH@REF`, where `*` (any run of characters)
/// may appear in the ref only, so the repository and workflow file are
/// always named exactly.
pub fn check_trusted_pattern(p: &str) -> std::result::Result<(), String> {
    let Some((workflow, git_ref)) = p.rsplit_once('@') else {
        return Err(format!(
            "{p:?} has no @REF: write SERVER/OWNER/REPO/.github/workflows/FILE@refs/heads/main (or @refs/tags/v*)"
        ));
    };
    if !workflow.starts_with("https://") {
        return Err(format!(
            "{p:?} is not an https URI: write the server URL, then the job_workflow_ref (https://SERVER/OWNER/REPO/.github/workflows/FILE@REF)"
        ));
    }
    if workflow.contains('*') {
        return Err(format!(
            "{p:?} has a `*` before the @: the repository and the workflow file are named exactly, only the ref may be a pattern"
        ));
    }
    if git_ref.is_empty() {
        return Err(format!("{p:?} has an empty ref after the @"));
    }
    if workflow.trim_start_matches("https://").split('/').count() < 3 {
        return Err(format!(
            "{p:?} names no repository: write https://SERVER/OWNER/REPO/.github/workflows/FILE@REF"
        ));
    }
    Ok(())
}

/// Whether `id` matches `pattern` (`*` matches any run of characters,
/// everything else is literal).
pub fn matches(pattern: &str, id: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == id;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !id.starts_with(first) || id.len() < first.len() + last.len() || !id.ends_with(last) {
        return false;
    }
    let mut rest = &id[first.len()..id.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether the policy trusts the workflow identity `id`: `Err` says why not
/// and how to change the policy (callers put "workflow ID is not trusted: "
/// in front).
pub fn trusted(patterns: &[String], id: &str) -> std::result::Result<(), String> {
    if patterns.is_empty() {
        return Err(format!(
            "{POLICY_PATH} trusts no CI identity ([builder] trusted is empty), so no CI run may release to a registry; to trust this workflow, add \"{id}\" to [builder] trusted and commit it ({DOC})"
        ));
    }
    if patterns.iter().any(|p| matches(p, id)) {
        return Ok(());
    }
    Err(format!(
        "it matches no entry of [builder] trusted in {POLICY_PATH} ({}); release from a trusted workflow and ref, or add it to the policy and commit it ({DOC})",
        patterns.join(", ")
    ))
}

/// The key of the issuer that signed a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsed {
    pub kid: String,
    pub alg: String,
    #[serde(rename = "jwksUri")]
    pub jwks_uri: String,
    /// The RFC 7638 JWK thumbprint (sha256 of the key's required members).
    pub thumbprint: Digest,
}

/// A token whose signature, issuer, audience and validity times were
/// checked. Holds the claims and digests, never the token.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
    pub key: KeyUsed,
    /// sha256 of the token's bytes.
    pub token: Digest,
}

/// What the lane expects of a token.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// Seconds since the epoch, from the adapter's clock.
    pub now: i64,
}

/// A URL with its query removed (for messages).
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// The `jwks_uri` of the issuer's discovery document, which must name the
/// expected issuer (OpenID Connect Discovery 1.0, 4.3).
pub fn jwks_uri(discovery: &Value, issuer: &str, from: &str) -> Result<String> {
    let got = discovery["issuer"].as_str().unwrap_or_default();
    if got.trim_end_matches('/') != issuer.trim_end_matches('/') {
        bail!(
            "the discovery document at {from} names issuer {got:?}, not {issuer:?}: [builder] issuer in {POLICY_PATH} must be the issuer's exact URL ({DOC})"
        );
    }
    let Some(uri) = discovery["jwks_uri"].as_str() else {
        bail!("the discovery document at {from} has no jwks_uri: is {issuer} an OIDC issuer?");
    };
    check_endpoint(uri).map_err(|e| anyhow::anyhow!("the discovery document's jwks_uri: {e}"))?;
    Ok(uri.to_string())
}

fn b64url(part: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()
}

/// RFC 7638: sha256 over the key's required members in lexicographic order.
fn thumbprint(jwk: &Value) -> Option<Digest> {
    let s = |k: &str| jwk[k].as_str().map(|v| serde_json::to_string(v).ok());
    let canonical = match jwk["kty"].as_str()? {
        "EC" => format!(
            "{{\"crv\":{},\"kty\":\"EC\",\"x\":{},\"y\":{}}}",
            s("crv")??,
            s("x")??,
            s("y")??
        ),
        "RSA" => format!("{{\"e\":{},\"kty\":\"RSA\",\"n\":{}}}", s("e")??, s("n")??),
        _ => return None,
    };
    Some(Digest::of(canonical.as_bytes()))
}

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{secs} s after the epoch"))
}

/// Verifies `token` with the issuer's `jwks` (fetched from `jwks_uri`):
/// the key `kid` names, RS256 or ES256 only, then issuer, audience and the
/// validity times. Every error says what failed and how to fix it.
pub fn verify_token(
    token: &str,
    jwks: &Value,
    jwks_uri: &str,
    expected: Expected<'_>,
) -> Result<VerifiedToken> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        bail!(
            "the token is not a signed JWT (compact JWS of three parts, found {}): the token endpoint answered something else",
            parts.len()
        );
    }
    if let Some(Err(e)) = b64url(parts[1]).map(|c| crate::strict_json::parse(&c)) {
        bail!("the token's claims are refused: {e}");
    }
    let header: Value = b64url(parts[0])
        .and_then(|h| crate::strict_json::parse(&h).ok())
        .filter(Value::is_object)
        .ok_or_else(|| anyhow::anyhow!("the token's header is not base64url JSON: not a JWT"))?;
    let alg_name = header["alg"].as_str().unwrap_or_default();
    if alg_name.eq_ignore_ascii_case("none") || parts[2].is_empty() {
        bail!(
            "the token is unsigned (alg {alg_name:?}, signature empty): an unsigned token is never accepted; only {} tokens signed by the issuer are",
            ALGORITHMS.join(" and ")
        );
    }
    let alg = match alg_name {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => bail!(
            "the token's algorithm {other:?} is refused: only {} are accepted",
            ALGORITHMS.join(" and ")
        ),
    };
    let Some(kid) = header["kid"].as_str() else {
        bail!(
            "the token's header names no key (kid): the lane verifies a token only with the issuer key it names"
        );
    };
    let keys = jwks["keys"].as_array().ok_or_else(|| {
        anyhow::anyhow!("the JWKS at {jwks_uri} has no \"keys\" array: is it a JSON Web Key Set?")
    })?;
    let Some(jwk_value) = keys.iter().find(|k| k["kid"] == kid) else {
        let known: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();
        bail!(
            "the token is signed with key {kid:?}, which the issuer's JWKS at {jwks_uri} does not list (it lists {}): the token was not made by [builder] issuer {}, or the issuer rotated its keys since; check the issuer in {POLICY_PATH} and request a new token ({DOC})",
            if known.is_empty() {
                "no key".to_string()
            } else {
                known.join(", ")
            },
            expected.issuer
        );
    };
    let jwk: Jwk = serde_json::from_value(jwk_value.clone()).map_err(|e| {
        anyhow::anyhow!("key {kid:?} of the JWKS at {jwks_uri} is not a valid JWK: {e}")
    })?;
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        _ => false,
    };
    if !fits || jwk_value["alg"].as_str().is_some_and(|a| a != alg_name) {
        bail!(
            "the token says {alg_name} but key {kid:?} of {jwks_uri} is a {} key{}: refused (a key is used only with its own algorithm)",
            jwk_value["kty"].as_str().unwrap_or("unknown"),
            jwk_value["alg"]
                .as_str()
                .map(|a| format!(" for {a}"))
                .unwrap_or_default()
        );
    }
    let key = DecodingKey::from_jwk(&jwk)
        .map_err(|e| anyhow::anyhow!("key {kid:?} of {jwks_uri} cannot be used: {e}"))?;
    // The signature only: the claims are checked below, against the time
    // this crate is given (jsonwebtoken would read the clock itself).
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) {
        Ok(d) => d,
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => bail!(
                "the token's signature does not verify with key {kid:?} of {jwks_uri}: the token was altered, or signed by someone else under that key id; it is refused"
            ),
            _ => bail!("the token cannot be verified with key {kid:?} of {jwks_uri}: {e}"),
        },
    };
    let claims = data.claims;
    let mut problems = Vec::new();
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if iss != expected.issuer {
        problems.push(format!(
            "the token's issuer is {iss:?}, but {POLICY_PATH} trusts tokens of {:?} ([builder] issuer): the token comes from another issuer; fix the policy's issuer if it is wrong",
            expected.issuer
        ));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&expected.audience) {
        problems.push(format!(
            "the token's audience is {audiences:?}, not {:?} ([builder] audience in {POLICY_PATH}): the lane asks for that audience; a token requested for another audience is refused (the workflow must not pass its own token)",
            expected.audience
        ));
    }
    problems.extend(time_problems(&claims, expected.now));
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(VerifiedToken {
        claims,
        key: KeyUsed {
            kid: kid.to_string(),
            alg: alg_name.to_string(),
            jwks_uri: without_query(jwks_uri).to_string(),
            thumbprint: thumbprint(jwk_value).ok_or_else(|| {
                anyhow::anyhow!("key {kid:?} of {jwks_uri} lacks a required member")
            })?,
        },
        token: Digest::of(token.as_bytes()),
    })
}

/// The git facts a token's claims must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkout {
    /// `git rev-parse HEAD`.
    pub sha: String,
    /// `OWNER/REPO` from the `origin` remote's URL; `None` without one.
    pub repository: Option<String>,
    /// The refs at HEAD: the branch checked out, and every branch, tag or
    /// pull-request ref pointing at HEAD (remote-tracking refs of origin
    /// as the refs they track).
    pub refs: Vec<String>,
}

/// `OWNER/REPO` of a git remote URL (`https://HOST/OWNER/REPO(.git)`,
/// `ssh://…`, `git@HOST:OWNER/REPO.git`).
pub fn repository_of_url(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => url.split_once(':')?.1,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [.., owner, repo] => Some(format!("{owner}/{repo}")),
        _ => None,
    }
}

/// A verified CI identity: what the provenance records about the run.
#[derive(Debug, Clone, PartialEq)]
pub struct CiIdentity {
    pub issuer: String,
    pub audience: String,
    /// Every claim of the verified token, as the issuer signed it.
    pub claims: Map<String, Value>,
    pub key: KeyUsed,
    /// sha256 of the token (the token itself is never recorded).
    pub token: Digest,
}

impl CiIdentity {
    /// `job_workflow_ref`, else `workflow_ref`.
    pub fn workflow_ref(&self) -> Option<&str> {
        workflow_ref(&self.claims)
    }

    /// The record in the provenance's `internalParameters.identity`.
    pub fn to_json(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "audience": self.audience,
            "claims": self.claims,
            "key": {
                "kid": self.key.kid,
                "alg": self.key.alg,
                "jwksUri": self.key.jwks_uri,
                "digest": { "sha256": self.key.thumbprint.hex() },
            },
            "token": { "digest": { "sha256": self.token.hex() } },
        })
    }
}

fn workflow_ref(claims: &Map<String, Value>) -> Option<&str> {
    claims
        .get("job_workflow_ref")
        .or_else(|| claims.get("workflow_ref"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The workflow identity URI of a run: `SERVER/job_workflow_ref`.
pub fn workflow_identity(server_url: &str, claims: &Map<String, Value>) -> Result<String> {
    let Some(wf) = workflow_ref(claims) else {
        bail!(
            "the token has neither a job_workflow_ref nor a workflow_ref claim: is [builder] issuer a GitHub Actions issuer?"
        );
    };
    if !server_url.starts_with("https://") {
        bail!(
            "GITHUB_SERVER_URL {server_url:?} is not an https URL: the workflow identity is SERVER_URL/job_workflow_ref"
        );
    }
    Ok(format!("{}/{wf}", server_url.trim_end_matches('/')))
}

/// Checks the token's claims against the checkout: `sha`, `repository`
/// and `ref`. Every mismatch is listed.
pub fn check_claims(token: &VerifiedToken, checkout: &Checkout) -> Result<()> {
    let claim = |k: &str| {
        token
            .claims
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    let sha = claim("sha");
    if !sha.eq_ignore_ascii_case(&checkout.sha) {
        problems.push(format!(
            "the token's sha {sha:?} is not the checkout's HEAD {}: the lane releases only the commit the CI run is for; check out the run's commit (actions/checkout without a ref)",
            checkout.sha
        ));
    }
    let repository = claim("repository");
    match &checkout.repository {
        None => problems.push(format!(
            "the checkout has no origin remote, so its repository cannot be compared with the token's {repository:?}; clone it (actions/checkout sets origin)"
        )),
        Some(r) if !r.eq_ignore_ascii_case(repository) => problems.push(format!(
            "the token's repository {repository:?} is not the checkout's {r:?} (origin remote): a token of another repository is refused"
        )),
        Some(_) => {}
    }
    let git_ref = claim("ref");
    if !checkout.refs.iter().any(|r| r == git_ref) {
        problems.push(format!(
            "the token's ref {git_ref:?} is not a ref of the checkout's HEAD ({}): check out the ref the run is for",
            if checkout.refs.is_empty() {
                "none".to_string()
            } else {
                checkout.refs.join(", ")
            }
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the token's claims do not match the checkout: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

impl fmt::Display for CiIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (issuer {}, {} key {})",
            self.workflow_ref().unwrap_or("?"),
            self.issuer,
            self.key.alg,
            self.key.kid
        )
    }
}

/// The reasons a provenance's `internalParameters.identity` does not back
/// the builder id `id` under a policy trusting `issuer` (for `verify`).
pub fn recorded_identity_reasons(
    id: &str,
    identity: &Value,
    issuer: &str,
    revision: Option<&str>,
) -> Vec<String> {
    if !identity.is_object() {
        return vec![format!(
            "the provenance of CI builder {id:?} records no verified OIDC identity (internalParameters.identity): it was not made by a lane that verified its CI token"
        )];
    }
    let mut out = Vec::new();
    let got = identity["issuer"].as_str().unwrap_or_default();
    if got != issuer {
        out.push(format!(
            "the builder identity was issued by {got:?}, but {POLICY_PATH} trusts tokens of {issuer:?} ([builder] issuer)"
        ));
    }
    let wf = identity["claims"]
        .as_object()
        .and_then(workflow_ref)
        .unwrap_or_default();
    if wf.is_empty() || !id.ends_with(&format!("/{wf}")) {
        out.push(format!(
            "builder id {id:?} is not the workflow of its verified claims ({wf:?})"
        ));
    }
    if let Some(rev) = revision {
        let sha = identity["claims"]["sha"].as_str().unwrap_or_default();
        if !sha.eq_ignore_ascii_case(rev) {
            out.push(format!(
                "the verified token was for commit {sha:?}, but the provenance's source revision is {rev:?}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_path_is_gates_own() {
        assert_eq!(POLICY_PATH, crate::gates::POLICY_PATH);
    }

    #[test]
    fn patterns_name_the_workflow_exactly_and_match_refs() {
        let id = "https://ci.example.com/o/r/.github/workflows/release.yml@refs/tags/v1.2";
        assert!(matches(
            "https://ci.example.com/o/r/.github/workflows/release.yml@refs/tags/v*",
            id
        ));
        assert!(matches(id, id));
        assert!(!matches(
            "https://ci.example.com/o/r/.github/workflows/release.yml@refs/heads/*",
            id
        ));
        assert!(matches("a*b*c", "abbbc"));
        assert!(!matches("a*b*c", "ac"));
        assert!(!matches("ab*ba", "aba"));
        assert!(
            check_trusted_pattern("https://ci.example.com/o/r/.github/workflows/*@refs/heads/main")
                .unwrap_err()
                .contains("only the ref may be a pattern")
        );
        assert!(
            check_trusted_pattern("ci.example.com/o/r/.github/workflows/x.yml@refs/heads/main")
                .unwrap_err()
                .contains("not an https URI")
        );
        assert!(check_trusted_pattern("https://ci.example.com/o@x").is_err());
        check_trusted_pattern("https://ci.example.com/o/r/.github/workflows/x.yml@refs/tags/v*")
            .unwrap();
        let e = trusted(&[], id).unwrap_err();
        assert!(e.contains("trusts no CI identity"), "{e}");
        assert!(e.contains(id), "the error names what to add: {e}");
        let e = trusted(&["https://ci.example.com/o/r/x@refs/heads/main".into()], id).unwrap_err();
        assert!(
            e.starts_with("it matches no entry of [builder] trusted"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_https_or_loopback() {
        check_endpoint(GITHUB_ISSUER).unwrap();
        check_endpoint("http://127.0.0.1:8080/x").unwrap();
        check_endpoint("http://[::1]:8080").unwrap();
        check_endpoint("http://localhost").unwrap();
        assert!(check_endpoint("http://issuer.example.com").is_err());
        assert!(check_endpoint("http://127.0.0.1.example.com/").is_err());
        assert!(check_endpoint("ftp://x").is_err());
        assert!(check_endpoint("https://").is_err());
        // Userinfo hides the host reached (issue 27, finding 6).
        for url in [
            "http://[::1]@issuer.example.com:80/",
            "http://localhost:1@issuer.example.com/",
            "https://user@issuer.example.com/",
        ] {
            let e = check_endpoint(url).unwrap_err();
            assert!(e.contains("userinfo"), "{url}: {e}");
        }
    }

    #[test]
    fn remote_urls_give_the_repository() {
        for url in [
            "https://ci.example.com/o/r",
            "https://ci.example.com/o/r.git",
            "git@ci.example.com:o/r.git",
            "ssh://git@ci.example.com/o/r.git",
            "https://ci.example.com/o/r/",
        ] {
            assert_eq!(repository_of_url(url).as_deref(), Some("o/r"), "{url}");
        }
        assert_eq!(repository_of_url("https://ci.example.com/r"), None);
    }

    /// An RS256 token signed by `openssl dgst -sha256 -sign` with a fresh
    /// 2048-bit key (made once for this test; only its public modulus is
    /// here), valid from 2000000000 to 2000000300.
    const RSA_N: &str = "1qFkRcM0yoC4NlomDA6FAhhCq9qnI_Zf3mJy2kVnFScVhox9ynFk4nG_YhCs1lGWN_2Q0cR5Xm5We37RuJCBgOBDoUN1LsEhYWHRBXBI8rCXIxilGwBnbo0vQdlvlS9tyLe7VESesbLS7ps-JVB_wosVr_hdQWN3nUUL9DYjeEkUfprfhFLDgLSWgbYKlwIlJFqdnrUp45wBTvll7Xw7VEkPwcOG_32WyP_JNaslf2OXRfEnQv3dKthys2GunYrWoqJdjqXDbvzWIReR3nq9-MUSDJF3bC3yH_qA2OjZARPuMZXW7MCsChSaqZM2-G8Z-104oTVc6x4HoPFprf2dtQ";
    const RSA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJhdWQiOiJyZWxlYXNlLWxhbmUiLCJleHAiOjIwMDAwMDAzMDAsImlhdCI6MjAwMDAwMDAwMCwiaXNzIjoiaHR0cHM6Ly9pc3N1ZXIuZXhhbXBsZS5jb20iLCJqb2Jfd29ya2Zsb3dfcmVmIjoiby9yLy5naXRodWIvd29ya2Zsb3dzL3JlbGVhc2UueW1sQHJlZnMvaGVhZHMvbWFpbiIsInJlZiI6InJlZnMvaGVhZHMvbWFpbiIsInJlcG9zaXRvcnkiOiJvL3IiLCJzaGEiOiIwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3In0.BsNbt8NowWZw3K1QZam7WHcd229JcSbytkV1wuJkGuZ4_iQCRTMzfTfhGDgfESsHaqDllZQbI2m4yqY2oT3bmrMd2Ij8tDo3h9K3QTuIPL1BhsNQ2cErnsNstH5OTOv-90rXneJO6UbTTStL26B7DnoB7CtQ0qPPGQXru4wZo-VbBLGWotVtrbkHSjnay8KoS-ajTHY59NddeazQkbnq0ckDraLxyZSRPp1uf-1KZH8JzxedBy0mbeUtueUX1iARqjTy4LgBSUc1wONr8O72tqklQk96ib8nKhkgKVqwB8Kya_tY1r3Mn1uxzK9xwIJjF7hKG5R1iOKknZ0xsIxJ1g";
    const ISSUER: &str = "https://issuer.example.com";

    fn rsa_jwks(kid: &str) -> Value {
        json!({ "keys": [
            { "kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "AA", "y": "AA" },
            { "kty": "RSA", "kid": kid, "n": RSA_N, "e": "AQAB", "alg": "RS256", "use": "sig" },
        ] })
    }

    /// The token with its header replaced (the signature stays).
    fn with_header(header: &Value) -> String {
        use base64::Engine as _;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(header).unwrap());
        let (_, rest) = RSA_TOKEN.split_once('.').unwrap();
        format!("{h}.{rest}")
    }

    fn expected(now: i64) -> Expected<'static> {
        Expected {
            issuer: ISSUER,
            audience: "release-lane",
            now,
        }
    }

    fn refused(token: &str, jwks: &Value, e: Expected<'_>) -> String {
        verify_token(token, jwks, "https://issuer.example.com/jwks", e)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn time_claims_must_be_integers() {
        let now = 2_000_000_000;
        let claims = |v: Value| v.as_object().unwrap().clone();
        let ok = claims(json!({ "exp": now + 60, "iat": now, "nbf": now }));
        assert!(time_problems(&ok, now).is_empty());
        // A float nbf a year ahead (issue 27, finding 8): refused.
        let float =
            claims(json!({ "exp": now + 60, "iat": now, "nbf": (now + 31_536_000) as f64 + 0.5 }));
        let p = time_problems(&float, now);
        assert!(
            p.iter()
                .any(|p| p.contains("nbf claim is") && p.contains("not an integer")),
            "{p:?}"
        );
        let p = time_problems(&claims(json!({ "exp": "soon" })), now);
        assert!(p.iter().any(|p| p.contains("exp claim")), "{p:?}");
    }

    #[test]
    fn an_rs256_token_verifies_with_the_key_its_kid_names() {
        let now = 2_000_000_100;
        let v = verify_token(
            RSA_TOKEN,
            &rsa_jwks("rsa-1"),
            "https://issuer.example.com/jwks?x=1",
            expected(now),
        )
        .unwrap();
        assert_eq!(v.claims["repository"], "o/r");
        assert_eq!(v.key.kid, "rsa-1");
        assert_eq!(v.key.alg, "RS256");
        assert_eq!(v.key.jwks_uri, "https://issuer.example.com/jwks");
        assert_eq!(v.token, Digest::of(RSA_TOKEN.as_bytes()));
        let canonical = format!("{{\"e\":\"AQAB\",\"kty\":\"RSA\",\"n\":\"{RSA_N}\"}}");
        assert_eq!(v.key.thumbprint, Digest::of(canonical.as_bytes()));

        // Another key id, the payload altered, another issuer or audience,
        // outside the validity window: each refused with its own message.
        let e = refused(RSA_TOKEN, &rsa_jwks("rsa-2"), expected(now));
        assert!(e.contains("signed with key \"rsa-1\", which the issuer's JWKS at https://issuer.example.com/jwks does not list (it lists ec-1, rsa-2)"), "{e}");
        let mut parts: Vec<String> = RSA_TOKEN.split('.').map(str::to_string).collect();
        parts[1] = parts[1].replacen(
            "eyJhdWQiOiJyZWxlYXNlLWxhbmUi",
            "eyJhdWQiOiJyZWxlYXNlLWxhbmYi",
            1,
        );
        let e = refused(&parts.join("."), &rsa_jwks("rsa-1"), expected(now));
        assert!(
            e.contains("signature does not verify with key \"rsa-1\""),
            "{e}"
        );
        let e = refused(
            RSA_TOKEN,
            &rsa_jwks("rsa-1"),
            Expected {
                issuer: GITHUB_ISSUER,
                audience: "other",
                now,
            },
        );
        assert!(e.contains("issuer is \"https://issuer.example.com\", but ci/release-policy.toml trusts tokens of"), "{e}");
        assert!(
            e.contains("audience is [\"release-lane\"], not \"other\""),
            "{e}"
        );
        let e = refused(
            RSA_TOKEN,
            &rsa_jwks("rsa-1"),
            expected(2_000_000_300 + 3600),
        );
        assert!(
            e.contains("expired at 2033-05-18T03:38:20Z (3600 s before this machine's clock"),
            "{e}"
        );
        let e = refused(RSA_TOKEN, &rsa_jwks("rsa-1"), expected(2_000_000_000 - 600));
        assert!(
            e.contains(
                "was issued at 2033-05-18T03:33:20Z (iat), 600 s after this machine's clock"
            ),
            "{e}"
        );
        assert!(
            e.contains("clock is behind the issuer's by about 600 s"),
            "{e}"
        );
        // Within the leeway both ways.
        verify_token(
            RSA_TOKEN,
            &rsa_jwks("rsa-1"),
            "u",
            expected(2_000_000_000 - LEEWAY_SECS),
        )
        .unwrap();
        verify_token(
            RSA_TOKEN,
            &rsa_jwks("rsa-1"),
            "u",
            expected(2_000_000_300 + LEEWAY_SECS),
        )
        .unwrap();
        // The RSA key is never used for ES256.
        let e = refused(
            &with_header(&json!({ "alg": "ES256", "kid": "rsa-1" })),
            &rsa_jwks("rsa-1"),
            expected(now),
        );
        assert!(e.contains("is a RSA key for RS256: refused"), "{e}");
    }

    #[test]
    fn alg_none_hmac_and_garbage_are_refused() {
        let jwks = rsa_jwks("rsa-1");
        for (header, sig, want) in [
            (
                json!({ "alg": "none", "kid": "rsa-1" }),
                "",
                "unsigned (alg \"none\"",
            ),
            (json!({ "alg": "none" }), "", "unsigned"),
            (json!({ "alg": "RS256", "kid": "rsa-1" }), "", "unsigned"),
            (
                json!({ "alg": "HS256", "kid": "rsa-1" }),
                "x",
                "algorithm \"HS256\" is refused",
            ),
            (json!({ "alg": "EdDSA", "kid": "rsa-1" }), "x", "is refused"),
            (json!({ "alg": "RS256" }), "x", "names no key (kid)"),
        ] {
            let t = with_header(&header);
            let (signed, _) = t.rsplit_once('.').unwrap();
            let t = format!("{signed}.{sig}");
            let e = refused(&t, &jwks, expected(2_000_000_100));
            assert!(e.contains(want), "{header}: {e}");
        }
        let e = refused("a.b", &jwks, expected(0));
        assert!(e.contains("not a signed JWT"), "{e}");
        let e = refused("!!.b.c", &jwks, expected(0));
        assert!(e.contains("not base64url JSON"), "{e}");
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638, section 3.1: the example key's thumbprint.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        use base64::Engine as _;
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
            .unwrap();
        let got = thumbprint(&jwk).unwrap();
        assert_eq!(
            got.hex(),
            want.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }

    fn verified(claims: Value) -> VerifiedToken {
        VerifiedToken {
            claims: claims.as_object().unwrap().clone(),
            key: KeyUsed {
                kid: "k".into(),
                alg: "ES256".into(),
                jwks_uri: "https://i/jwks".into(),
                thumbprint: Digest::of(b"k"),
            },
            token: Digest::of(b"t"),
        }
    }

    #[test]
    fn claims_must_be_the_checkouts() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let checkout = Checkout {
            sha: sha.into(),
            repository: Some("o/r".into()),
            refs: vec!["refs/heads/main".into()],
        };
        let ok = json!({ "sha": sha, "repository": "o/r", "ref": "refs/heads/main",
            "job_workflow_ref": "o/r/.github/workflows/release.yml@refs/heads/main" });
        check_claims(&verified(ok.clone()), &checkout).unwrap();
        let mut bad = ok.clone();
        bad["sha"] = json!("f".repeat(40));
        bad["repository"] = json!("fork/r");
        bad["ref"] = json!("refs/heads/other");
        let e = check_claims(&verified(bad), &checkout)
            .unwrap_err()
            .to_string();
        for want in [
            "sha \"ffff",
            "repository \"fork/r\" is not the checkout's \"o/r\"",
            "ref \"refs/heads/other\" is not a ref of the checkout's HEAD (refs/heads/main)",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let no_origin = Checkout {
            repository: None,
            ..checkout.clone()
        };
        let e = check_claims(&verified(ok.clone()), &no_origin)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no origin remote"), "{e}");
        assert_eq!(
            workflow_identity("https://ci.example.com/", ok.as_object().unwrap()).unwrap(),
            "https://ci.example.com/o/r/.github/workflows/release.yml@refs/heads/main"
        );
        assert!(workflow_identity("http://ci.example.com", ok.as_object().unwrap()).is_err());
        assert!(workflow_identity("https://ci.example.com", &Map::new()).is_err());
    }

    #[test]
    fn a_recorded_identity_must_back_the_builder_id() {
        let id = "https://ci.example.com/o/r/.github/workflows/release.yml@refs/heads/main";
        let rev = "0123456789abcdef0123456789abcdef01234567";
        let recorded = crate::testing::ci_identity(id).to_json();
        assert!(recorded_identity_reasons(id, &recorded, GITHUB_ISSUER, Some(rev)).is_empty());
        let r = recorded_identity_reasons(id, &Value::Null, GITHUB_ISSUER, Some(rev));
        assert!(r[0].contains("records no verified OIDC identity"), "{r:?}");
        let other = "https://ci.example.com/o/r/.github/workflows/other.yml@refs/heads/main";
        let r = recorded_identity_reasons(other, &recorded, "https://i", Some(&"f".repeat(40)));
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r[0].contains("issued by \"https://token.actions"), "{r:?}");
        assert!(
            r[1].contains("is not the workflow of its verified claims"),
            "{r:?}"
        );
        assert!(r[2].contains("the verified token was for commit"), "{r:?}");
    }
}
