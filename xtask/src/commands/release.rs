//! `cargo xtask release`: its flags and its output, over `lane::release`.

use crate::adapters::registry::RegistryTarget;
use crate::adapters::workspace::Workspace;
use crate::lane::release::{ReleaseOptions, release, summary};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// The release lane: preflight, build, gates, publish by digest, provenance,
/// then accept (move the tags) or reject (move nothing).
///
/// Every gate is required: source-state, pinned-inputs, reproducible,
/// no-drift, smoke, publish-cross-check, provenance-complete, plus what
/// ci/release-policy.toml adds. A gate that fails or does not run rejects
/// the release. Without --registry the release goes to the embedded local
/// store under target/local-registry/. Exits 0 only when every image is
/// accepted. The release record is written to target/releases/.
#[derive(clap::Args)]
pub struct Args {
    /// Images to release (default: all).
    pub images: Vec<String>,
    /// HOST[:PORT][/PREFIX] of the registry to release to (default:
    /// $LANE_REGISTRY, else the local store under target/). A registry
    /// release needs an authoritative (CI) builder.
    #[arg(long, value_name = "REGISTRY")]
    pub registry: Option<RegistryTarget>,
    /// Print the release report as JSON.
    #[arg(long)]
    pub json: bool,
    /// PKCS#8 PEM ECDSA P-256 key that signs the evidence (default:
    /// the file named by $LANE_SIGNING_KEY_FILE, else the PEM in
    /// $LANE_SIGNING_KEY). Without a key the evidence is unsigned and
    /// `cargo xtask verify` refuses it.
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    #[command(flatten)]
    pub cache: crate::cli::CacheArgs,
    /// Run every gate. By default, when the candidate digest already
    /// carries a signed gate statement of an accepted release under the
    /// same policy and gate definitions, reproducible, no-drift,
    /// no-unused-packages, smoke and sbom-complete are carried over from it
    /// (`"reused"` in --json) and the second build is stopped; the other
    /// gates and a new signed provenance are made every time.
    #[arg(long)]
    pub no_reuse: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args {
        images,
        registry,
        json,
        signing_key,
        cache,
        no_reuse,
    } = args;
    let signer =
        crate::adapters::keys::load_signer(signing_key.as_deref(), &crate::adapters::secrets::var)?;
    if let Some(r) = &registry {
        crate::adapters::registry::bind_env_credentials(r.host());
    }
    let mut store = crate::lane::publish::open_store(ws, registry, json)?;
    let opts = ReleaseOptions {
        images,
        quiet: json,
        signer,
        cache: cache.cache,
        no_reuse,
    };
    let report = release(ws, &opts, store.as_mut())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(if report.accepted && report.tags_held {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
