//! The verify engine (`cargo xtask verify`, and what promote and audit
//! read): is this digest an accepted release of the lane?
//!
//! Two halves, both in `lane_core::verify`. [`fetch_evidence`] reads what
//! is attached to a digest through a [`Store`] (the store is the adapter). [`check`] is pure: the requested digest, the
//! attached envelopes and the policy in, every reason for refusal out. An
//! empty list of reasons is the only way to `verified`.

use anyhow::{Result, bail};

use crate::adapters::registry::RegistryTarget;

use lane_core::gates::Policy;
use lane_core::id::{Digest, Location, Reference, Repository, Target};
use lane_core::store::Store;
pub use lane_core::verify::*;

/// Parses a reference (`lane_core::id::Reference`: `HOST[:PORT]/REPO@sha256:..`,
/// `local/REPO@sha256:..`, `REPO@sha256:..`, `REPO[:TAG]`).
pub fn parse_reference(text: &str) -> Result<Reference> {
    text.parse::<Reference>()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Parses a reference that must name a digest; a tag gets [`NEEDS_DIGEST`].
/// Returns where it points, the repository and the digest.
pub fn parse_digest_reference(text: &str) -> Result<(Location, Repository, Digest)> {
    match text.parse::<Reference>() {
        Ok(Reference {
            location,
            repository,
            target: Target::Digest(d),
        }) => Ok((location, repository, d)),
        Ok(_) => bail!("{NEEDS_DIGEST}"),
        // `repo:tag` with a bad tag is still a tag-only reference.
        Err(_) if !text.contains('@') => bail!("{NEEDS_DIGEST}"),
        Err(e) => bail!("{e}"),
    }
}

/// Fetches and checks: the whole of `cargo xtask verify`.
pub fn verify(
    store: &mut dyn Store,
    repository: &Repository,
    digest: &Digest,
    policy: &Policy,
    allow_local_builder: bool,
) -> Result<(Evidence, Verdict)> {
    let evidence = fetch_evidence(store, repository, digest)?;
    let verdict = check(
        digest.as_str(),
        &evidence,
        policy,
        VerifyOptions {
            registry: store.is_registry(),
            allow_local_builder,
        },
    );
    Ok((evidence, verdict))
}

/// The registry a reference names (`HOST[:PORT]/REPO@...`) must agree with
/// `--registry` when both are given; `local/REPO@...` names the local store.
pub fn registry_for(
    location: Location,
    flag: Option<RegistryTarget>,
) -> Result<Option<RegistryTarget>> {
    match (location, flag) {
        (Location::Unspecified, flag) => Ok(flag),
        (Location::Local, None) => Ok(None),
        (Location::Local, Some(r)) => bail!(
            "the reference names the local store (local/...), but --registry {r} was given; drop one of them"
        ),
        (Location::Registry(host), None) => {
            Ok(Some(host.parse().map_err(|e: String| {
                anyhow::anyhow!("registry {host}: {e}")
            })?))
        }
        (Location::Registry(host), Some(r)) if r.host() == host => Ok(Some(r)),
        (Location::Registry(host), Some(r)) => bail!(
            "the reference names registry {host}, but --registry is {r}; drop one of them or make them agree"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_tags_are_refused_where_a_digest_is_needed() {
        let d = format!("sha256:{}", "a".repeat(64));
        let (loc, repo, digest) = parse_digest_reference(&format!("platform/hello@{d}")).unwrap();
        assert_eq!(
            (loc, repo.as_str(), digest.as_str()),
            (Location::Unspecified, "platform/hello", d.as_str())
        );
        let (loc, repo, _) =
            parse_digest_reference(&format!("127.0.0.1:5000/platform/hello@{d}")).unwrap();
        assert_eq!(loc, Location::Registry("127.0.0.1:5000".into()));
        assert_eq!(repo, "platform/hello");
        let (loc, _, _) = parse_digest_reference(&format!("local/platform/hello@{d}")).unwrap();
        assert_eq!(loc, Location::Local);
        for tag_only in ["platform/hello:v1", "platform/hello", "platform/hello:"] {
            assert_eq!(
                parse_digest_reference(tag_only).unwrap_err().to_string(),
                NEEDS_DIGEST
            );
        }
        assert!(parse_digest_reference("platform/hello@sha256:abc").is_err());
        assert!(parse_reference(&format!("../etc@{d}")).is_err());
    }
}
