//! `cargo xtask publish`: its flags and its output, over `lane::publish`.

use crate::adapters::registry::RegistryTarget;
use crate::adapters::workspace::Workspace;
use crate::lane::publish::{PublishOptions, publish};
use anyhow::Result;
use std::process::ExitCode;

/// Build images and publish them by digest, cross-checked, then tag them.
///
/// Preflight first, before anything is built: the registry is reachable,
/// credentials are present and accepted, and push is allowed on every
/// target repository (an upload session is opened and cancelled).
/// Then each image's blobs the registry lacks are uploaded (HEAD first),
/// the manifest's exact bytes are pushed by digest and read back: the
/// reported Docker-Content-Digest, the hash of the fetched bytes and every
/// blob's size must match, or the publish fails and no tag moves. Only
/// then is each tag applied and read back.
///
/// Credentials: LANE_REGISTRY_USER and LANE_REGISTRY_PASSWORD, else
/// Docker's config.json ($DOCKER_CONFIG or ~/.docker: auths, credHelpers,
/// credsStore). Plain HTTP for loopback registries only.
///
/// With no registry (no --registry, no LANE_REGISTRY), images go into the
/// local OCI image layout store target/local-registry/<repository>/.
#[derive(clap::Args)]
pub struct Args {
    /// Images to publish (default: all); their workspace bases are published too.
    pub images: Vec<String>,
    /// HOST[:PORT][/PREFIX], e.g. 127.0.0.1:5000 or registry.example.com/team
    /// (default: $LANE_REGISTRY, else the local store).
    #[arg(long, value_name = "REGISTRY")]
    pub registry: Option<RegistryTarget>,
    /// Apply this tag instead of the tags in image.toml.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Print {destination, images:[{image, registry, repository, reference,
    /// digest, tags, blobs:{uploaded, skipped, mounted, bytes_uploaded}, cross_check}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args {
        images,
        registry,
        tag,
        json,
    } = args;
    if let Some(r) = &registry {
        crate::adapters::registry::bind_env_credentials(r.host());
    }
    let opts = PublishOptions {
        registry,
        tag,
        quiet: json,
    };
    let run = publish(ws, &images, &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        for i in &run.images {
            println!(
                "{}\t{}\ttags {}\t{} blobs uploaded ({} bytes), {} skipped, {} mounted\tcross-check ok",
                i.image,
                i.reference,
                i.tags
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                i.blobs.uploaded,
                i.blobs.bytes_uploaded,
                i.blobs.skipped,
                i.blobs.mounted
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
