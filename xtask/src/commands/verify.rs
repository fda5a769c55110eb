//! `cargo xtask verify`: is this digest an accepted release of the lane?
//!
//! Two halves, both in `lane_core::verify`. [`fetch_evidence`] reads what
//! is attached to a digest through a [`Store`] (the store is the adapter). [`check`] is pure: the requested digest, the
//! attached envelopes and the policy in, every reason for refusal out. An
//! empty list of reasons is the only way to `verified`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::adapters::registry::RegistryTarget;
use crate::adapters::workspace::Workspace;

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

/// Where verify, promote and audit read, and which builders they accept.
#[derive(clap::Args)]
pub struct ReadArgs {
    /// The image, as `release --json` and `publish --json` print it:
    /// HOST[:PORT]/REPO@sha256:<hex>, local/REPO@sha256:<hex>, or
    /// REPO@sha256:<hex> (REPO as in image.toml `repository`; audit also
    /// takes REPO:TAG).
    pub reference: String,
    /// HOST[:PORT][/PREFIX] of the registry to read (default:
    /// $LANE_REGISTRY, else the local store under target/).
    #[arg(long, value_name = "REGISTRY")]
    pub registry: Option<RegistryTarget>,
    /// Accept evidence from a local (non-CI) run. Only for the local
    /// store: a local builder is never trusted for a registry.
    #[arg(long)]
    pub allow_local_builder: bool,
    #[arg(long)]
    pub json: bool,
}

impl ReadArgs {
    /// The policy, and the store a reference at `location` names (which
    /// must agree with `--registry` when both are given).
    pub fn open(&self, ws: &Workspace, location: Location) -> Result<(Policy, Box<dyn Store>)> {
        let (policy, _) = crate::commands::release::load_policy(ws)?;
        // The environment's credential goes to an explicit --registry, never
        // to a host a reference merely names.
        if let Some(r) = &self.registry {
            crate::adapters::registry::bind_env_credentials(r.host());
        }
        let registry = registry_for(location, self.registry.clone())?;
        let store = crate::commands::publish::open_store(ws, registry, self.json)?;
        Ok((policy, store))
    }
}

/// The registry a reference names (`HOST[:PORT]/REPO@...`) must agree with
/// `--registry` when both are given; `local/REPO@...` names the local store.
fn registry_for(
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

/// Check that a digest is an accepted release of the lane.
///
/// Reads the evidence attached to the digest (referrers of the digest),
/// and checks: every envelope is signed by a key in [signing]
/// trusted_keys of ci/release-policy.toml; every statement's subject is
/// exactly this digest; predicate types are SLSA provenance v1, in-toto
/// test-result v0.1 and the SPDX 2.3 SBOM, and nothing else; the builder
/// is trusted (a CI workflow; the local builder only for the local store,
/// with --allow-local-builder);
/// every required gate passed. Exits 0 only when all hold, and lists
/// every reason otherwise. Needs a digest: REPO@sha256:<hex>.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub read: ReadArgs,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let (location, repository, digest) = parse_digest_reference(&args.read.reference)?;
    let (policy, mut store) = args.read.open(ws, location)?;
    let read = &args.read;
    let (_, verdict) = verify(
        store.as_mut(),
        &repository,
        &digest,
        &policy,
        read.allow_local_builder,
    )?;
    if read.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print!("{}", summary(&read.reference, &verdict));
    }
    Ok(if verdict.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
