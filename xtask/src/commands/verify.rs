//! `cargo xtask verify`: is this digest an accepted release of the lane?
//!
//! Two halves. [`fetch_evidence`] reads what is attached to a digest through
//! a [`Store`] (the adapter). [`check`] is pure: the requested digest, the
//! attached envelopes and the policy in, every reason for refusal out. An
//! empty list of reasons is the only way to `verified`.

use std::fmt;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use lane_core::evidence::{ANNOTATION_PREDICATE, MEDIA_DSSE, MEDIA_RELEASE_RECORD};
use lane_core::gates::Policy;
use lane_core::store::Store;
pub use lane_core::verify::*;

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

/// Reads the evidence attached to `digest` in `repository`. Errors only when
/// the store cannot be read at all; a damaged artifact is a problem listed
/// in the result (and a reason for [`check`] to refuse).
pub fn fetch_evidence(store: &mut dyn Store, repository: &str, digest: &str) -> Result<Evidence> {
    fetch_manifest(store, repository, digest)?;
    let mut out = Evidence::default();
    for r in lane_core::store::referrers(store, repository, digest)? {
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
    let actual = lane_core::layer::sha256(&bytes);
    if actual != digest {
        bail!(
            "{} serves {repository}@{digest} with bytes that hash to {actual}",
            store.describe()
        );
    }
    Ok(bytes)
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
