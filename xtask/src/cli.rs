//! Flag groups more than one command takes: the shared action cache
//! (`build`, `release`) and where `verify`, `promote` and `audit` read.

use anyhow::Result;

use crate::adapters::registry::RegistryTarget;
use crate::adapters::workspace::Workspace;
use crate::lane::build::SharedCache;
use lane_core::gates::Policy;
use lane_core::id::Location;
use lane_core::store::Store;

/// The shared action cache (`build` and `release`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// HOST[:PORT]/REPO of a registry repository used as a shared action
    /// cache (default: $LANE_CACHE). Every run reads it (each entry is
    /// verified before use); only an authoritative run, a verified CI
    /// identity the policy trusts, writes to it. Credentials as for publish.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub cache: Option<String>,
}

impl CacheArgs {
    /// `--cache`, else `$LANE_CACHE`; writes when `authoritative`.
    pub fn shared(&self, authoritative: bool) -> Option<SharedCache> {
        crate::lane::build::shared_cache(self.cache.clone(), authoritative)
    }
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
        let (policy, _) = ws.policy()?;
        // The environment's credential goes to an explicit --registry, never
        // to a host a reference merely names.
        if let Some(r) = &self.registry {
            crate::adapters::registry::bind_env_credentials(r.host());
        }
        let registry = crate::lane::verify::registry_for(location, self.registry.clone())?;
        let store = crate::lane::publish::open_store(ws, registry, self.json)?;
        Ok((policy, store))
    }
}
