//! The smoke engine (`cargo xtask smoke`): run the exact image the lane built in the Docker
//! Engine, with its `[[smoke]]` commands from `image.toml`.
//!
//! This module is the pure part plus the file-system side: reading an OCI
//! layout back ([`crate::adapters::layout::Layout::smoke_image`], which re-hashes the manifest and config),
//! the `manifest.json` that lets engines without OCI-layout support load it
//! (`lane_core::oci::docker_manifest`), the identity rule ([`check_identity`]) and the
//! evaluation of one command's outcome ([`evaluate`]). The engine adapter
//! (bollard, async) is [`crate::adapters::engine`].

use anyhow::{Context, Result, bail};

use crate::adapters::engine::{self, SmokeOptions};
use crate::adapters::workspace::{self, Workspace};
use crate::lane::build::{self, BuildOptions};
use lane_core::distribution::BuiltImage;
use lane_core::smoke::SmokeReport;

/// `cargo xtask smoke IMAGE`: checks that the engine is reachable, builds
/// the image, loads it and runs its smoke commands.
pub fn smoke(ws: &Workspace, name: &str, opts: &SmokeOptions) -> Result<SmokeReport> {
    let images = ws.load_images()?;
    let spec = workspace::select(&images, &[name.to_string()])?
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no image {name:?} in images/"))?;
    if spec.smoke.is_empty() && spec.python.is_none() {
        bail!(
            "image {name} declares no smoke command; add a [[smoke]] entry (name, command, expect_exit) to {}/image.toml",
            spec.dir
        );
    }
    // Fail before building when there is no engine to run the check in.
    engine::probe()?;
    let mut build_opts = BuildOptions::for_workspace(ws);
    build_opts.quiet = opts.quiet;
    let report = build::build(ws, &[name.to_string()], &build_opts)?;
    let built: &BuiltImage = report
        .images
        .iter()
        .find(|i| i.name == name)
        .with_context(|| format!("the build did not produce image {name}"))?;
    let image = crate::adapters::layout::Layout::at(name, &built.layout)
        .smoke_image(built.manifest_digest.as_str())?;
    let checks = crate::lane::drift::smoke_checks(ws, &spec, &built.layout)?;
    let opts = SmokeOptions {
        user: opts.user.clone().or_else(|| spec.smoke_user.clone()),
        ..opts.clone()
    };
    engine::smoke(&image, &checks, &opts)
}
