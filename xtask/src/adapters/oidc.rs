//! The CI identity's I/O: GitHub Actions' ID-token request, the issuer's
//! discovery document and JWKS, the checkout's git facts. Every check is
//! `lane_core::identity`'s; this adapter fetches and hands over values.
//!
//! The request follows GitHub's format: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD`
//! with `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`, answered
//! `{"value": "<jwt>"}`. Both the request token and the ID token are
//! secrets: they live in [`Secret`]s, are never printed or written, and
//! only the ID token's claims and sha256 leave this module.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use lane_core::gates::{POLICY_PATH, Policy};
use lane_core::identity::{self, CiIdentity, DOC, Expected};
use lane_core::provenance::BuilderRun;

pub const ENV_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const ENV_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
/// The audience the workflow passes; it must be the policy's (the policy
/// decides, the workflow states what it expects).
pub const ENV_AUDIENCE: &str = "LANE_OIDC_AUDIENCE";

/// A secret string that never shows itself.
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who runs the lane, as far as the environment and the issuer say.
#[derive(Debug)]
pub enum Identified {
    /// Not a CI run: the local builder.
    NotCi,
    /// A CI run whose token verified and whose claims match the checkout;
    /// `trusted` says whether the policy trusts its workflow (and, if not,
    /// why and how to fix it).
    Verified {
        builder: Box<BuilderRun>,
        trusted: std::result::Result<(), String>,
    },
}

/// The identity preflight. `get` reads the environment; `now` is the
/// clock (seconds since the epoch). `Err` is a bootstrap failure, its
/// message naming the fix.
pub fn identify(
    root: &Path,
    policy: &Policy,
    get: &dyn Fn(&str) -> Option<String>,
    now: i64,
    lane_version: &str,
) -> Result<Identified> {
    let actions = get("GITHUB_ACTIONS").as_deref() == Some("true");
    let url = get(ENV_REQUEST_URL).filter(|v| !v.is_empty());
    let request = get(ENV_REQUEST_TOKEN).filter(|v| !v.is_empty()).map(Secret);
    if !actions && url.is_none() && request.is_none() {
        return Ok(Identified::NotCi);
    }
    let (Some(url), Some(request)) = (url, request) else {
        bail!(
            "this run says it is GitHub Actions (GITHUB_ACTIONS=true) but {ENV_REQUEST_URL} and {ENV_REQUEST_TOKEN} are not both set, so it has no OIDC token to prove it: GitHub sets them only when the job has `permissions: id-token: write` (add it to the release job of .github/workflows/release.yml), and never for a pull request from a fork; a run outside CI is the local builder and releases into the local store only (omit --registry) ({DOC})"
        );
    };
    if let Some(aud) = get(ENV_AUDIENCE).filter(|a| *a != policy.audience) {
        bail!(
            "the workflow passes audience {aud:?} ({ENV_AUDIENCE}) but {POLICY_PATH} requires {:?} ([builder] audience): make them the same, in the workflow or in the committed policy ({DOC})",
            policy.audience
        );
    }
    let server_url = get("GITHUB_SERVER_URL").unwrap_or_default();
    if server_url.is_empty() {
        bail!(
            "GITHUB_SERVER_URL is not set: GitHub Actions sets it; the workflow identity is GITHUB_SERVER_URL/job_workflow_ref ({DOC})"
        );
    }
    let http = client()?;
    let token = request_token(&http, &url, &request, &policy.audience)?;
    drop(request);
    let verified = verify(&http, &token, policy, now)?;
    drop(token);
    let checkout = crate::adapters::workspace::checkout(root)?;
    identity::check_claims(&verified, &checkout)?;
    let builder = BuilderRun::ci(
        &server_url,
        CiIdentity {
            issuer: policy.issuer.clone(),
            audience: policy.audience.clone(),
            claims: verified.claims,
            key: verified.key,
            token: verified.token,
        },
        lane_version,
    )?;
    let trusted = identity::trusted(&policy.trusted_builders, &builder.id)
        .map_err(|why| format!("workflow {} is not trusted: {why}", builder.id));
    Ok(Identified::Verified {
        builder: Box::new(builder),
        trusted,
    })
}

/// Most bytes of the token endpoint's answer the lane reads.
pub const MAX_TOKEN_ANSWER_BYTES: u64 = 64 << 10;
/// Most bytes of the issuer's discovery document or JWKS the lane reads.
pub const MAX_ISSUER_DOCUMENT_BYTES: u64 = 1 << 20;

/// The OIDC client: redirects judged by the one rule for handed-back URLs
/// (`urls::check`: the same origin, or another over https; never userinfo,
/// never https to http), at most 5 of them.
fn client() -> Result<reqwest::blocking::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > 5 {
            return attempt.error("more than 5 redirects");
        }
        let from = attempt.previous()[attempt.previous().len() - 1].clone();
        match crate::adapters::urls::check(&from, attempt.url().clone(), "the issuer redirected to")
        {
            Ok(_) => attempt.follow(),
            Err(e) => attempt.error(format!("{e:#}")),
        }
    });
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(policy)
        .user_agent(concat!("release-lane-xtask/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("creating the HTTP client for the OIDC issuer")
}

/// A response body, refused once it passes `limit` bytes (by its
/// Content-Length first, then by counting).
fn read_capped(resp: reqwest::blocking::Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    if resp.content_length().is_some_and(|n| n > limit) {
        bail!("{what} is more than {limit} bytes, more than the lane reads");
    }
    let mut out = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("reading {what}: {e}"))?;
    if out.len() as u64 > limit {
        bail!("{what} is more than {limit} bytes, more than the lane reads");
    }
    Ok(out)
}

/// A transport error with its causes (`error sending request: ...:
/// Connection refused`), without the URL (which the message names itself).
fn transport(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// `scheme://host[:port]` of a URL: what messages may show of it.
fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}",
            rest.split(['/', '?', '#']).next().unwrap_or_default()
        ),
        None => "(not a URL)".into(),
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GitHub's token request: `GET URL&audience=AUD`, bearer request token.
fn request_token(
    http: &reqwest::blocking::Client,
    url: &str,
    request: &Secret,
    audience: &str,
) -> Result<Secret> {
    identity::check_endpoint(url).map_err(|e| anyhow!("{ENV_REQUEST_URL}: {e}"))?;
    let at = origin(url);
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}audience={}", query_value(audience));
    let resp = http
        .get(&full)
        .header("Authorization", format!("bearer {}", request.0))
        .header("Accept", "application/json")
        .send()
        .map_err(|e| {
            anyhow!(
                "cannot reach the token endpoint at {at} ({ENV_REQUEST_URL}): {}; the runner must reach GitHub's token service",
                transport(e)
            )
        })?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "the token endpoint at {at} ({ENV_REQUEST_URL}) refused the ID-token request for audience {audience:?} with {status}: {}",
            match status.as_u16() {
                401 | 403 =>
                    "the request token was refused; the job needs `permissions: id-token: write` in .github/workflows/release.yml, and the token must be requested during the job that was given it",
                404 =>
                    "the request URL is not a token endpoint; use ACTIONS_ID_TOKEN_REQUEST_URL as GitHub sets it",
                _ => "the token service failed; run the job again",
            }
        );
    }
    let body = read_capped(
        resp,
        MAX_TOKEN_ANSWER_BYTES,
        &format!("the token endpoint's answer ({at})"),
    )?;
    let value = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["value"].as_str().map(str::to_string))
        .ok_or_else(|| {
            anyhow!(
                "the token endpoint at {at} answered {status} without a JSON {{\"value\": TOKEN}}: is {ENV_REQUEST_URL} GitHub's token endpoint?"
            )
        })?;
    Ok(Secret(value))
}

/// GET `url` and parse JSON; `what` names the document in errors.
fn get_json(http: &reqwest::blocking::Client, url: &str, what: &str) -> Result<Value> {
    let fix = format!(
        "check [builder] issuer in {POLICY_PATH} and that the runner can reach the issuer ({DOC})"
    );
    let resp = http
        .get(url)
        .header("Accept", "application/json")
        .send()
        .map_err(|e| anyhow!("cannot reach {what} at {url}: {}; {fix}", transport(e)))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{what} at {url} answered {status}; {fix}");
    }
    let body = read_capped(resp, MAX_ISSUER_DOCUMENT_BYTES, &format!("{what} at {url}"))?;
    serde_json::from_slice(&body).map_err(|e| anyhow!("{what} at {url} is not JSON ({e}); {fix}"))
}

/// The issuer's discovery document, its JWKS, and the token verified with
/// them at `now`.
fn verify(
    http: &reqwest::blocking::Client,
    token: &Secret,
    policy: &Policy,
    now: i64,
) -> Result<identity::VerifiedToken> {
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        policy.issuer.trim_end_matches('/')
    );
    let discovery = get_json(http, &discovery_url, "the issuer's discovery document")?;
    let jwks_uri = identity::jwks_uri(&discovery, &policy.issuer, &discovery_url)?;
    let jwks = get_json(http, &jwks_uri, "the issuer's JWKS (jwks_uri)")?;
    identity::verify_token(
        &token.0,
        &jwks,
        &jwks_uri,
        Expected {
            issuer: &policy.issuer,
            audience: &policy.audience,
            now,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_no_path_or_query_and_audiences_are_encoded() {
        assert_eq!(
            origin("https://ci.example.com:8443/a/b?api-version=2.0&x=secret"),
            "https://ci.example.com:8443"
        );
        assert_eq!(query_value("release lane/&x"), "release%20lane%2F%26x");
        assert_eq!(format!("{:?}", Secret("abc".into())), "<redacted>");
    }

    #[test]
    fn no_ci_variables_is_the_local_builder_and_half_of_them_is_an_error() {
        let policy = Policy::default();
        let root = Path::new(".");
        let none = |_: &str| None;
        assert!(matches!(
            identify(root, &policy, &none, 0, "0").unwrap(),
            Identified::NotCi
        ));
        // The spoofed laptop: GitHub's variables, no token to prove them.
        let spoofed = |k: &str| match k {
            "GITHUB_ACTIONS" => Some("true".to_string()),
            "GITHUB_SERVER_URL" => Some("https://ci.example.com".to_string()),
            _ => None,
        };
        let e = identify(root, &policy, &spoofed, 0, "0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("permissions: id-token: write"), "{e}");
        assert!(e.contains("fork"), "{e}");
    }
}

/// Who runs the lane: a verified CI identity (refused here, with the fix,
/// when a registry release needs one and it does not verify), else the
/// local builder.
pub fn builder_run(
    root: &std::path::Path,
    policy: &Policy,
    to_registry: bool,
    progress: &crate::report::Reporter,
) -> Result<lane_core::provenance::BuilderRun> {
    let get = |k: &str| crate::adapters::secrets::var(k);
    let version = env!("CARGO_PKG_VERSION");
    let local = || lane_core::provenance::BuilderRun::local(version, get("LANE_INVOCATION_ID"));
    let now = chrono::Utc::now().timestamp();
    match identify(root, policy, &get, now, version) {
        Ok(Identified::NotCi) => {
            progress.say(format_args!(
                "preflight: not a CI run: builder {} (accepted into the local store only)",
                lane_core::provenance::LOCAL_BUILDER_ID
            ));
            Ok(local())
        }
        Ok(Identified::Verified {
            builder,
            trusted: Ok(()),
        }) => {
            if let Some(i) = &builder.identity {
                progress.say(format_args!(
                    "preflight: CI identity verified: builder {} ({i})",
                    builder.id
                ));
            }
            Ok(*builder)
        }
        Ok(Identified::Verified {
            builder,
            trusted: Err(why),
        }) => {
            if to_registry {
                bail!("preflight: CI identity: {why}");
            }
            progress.warn(format_args!(
                "preflight: CI identity: {why}; the local store takes the release anyway"
            ));
            Ok(*builder)
        }
        Err(e) if to_registry => Err(e.context("preflight: CI identity")),
        Err(e) => {
            progress.warn(format_args!(
                "preflight: CI identity not verified: {e:#}; this run is the local builder, which only the local store accepts"
            ));
            Ok(local())
        }
    }
}

/// True only for a verified CI identity the policy trusts.
pub fn authoritative(policy: &Policy, builder: &lane_core::provenance::BuilderRun) -> bool {
    builder.identity.is_some()
        && lane_core::identity::trusted(&policy.trusted_builders, &builder.id).is_ok()
}
