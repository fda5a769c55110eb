//! What a build will do, computed before doing it (`build::plan`): the
//! types the build, the input keys and the release share.

use std::path::PathBuf;

use crate::adapters::workspace::{BinaryRequest, Toolchain};
use lane_core::oci::SourceFacts;
use lane_core::spec::ImageSpec;

/// Everything a build will do, computed before doing it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildPlan {
    pub source: SourceFacts,
    pub toolchain: Toolchain,
    pub encoder: String,
    pub binaries: Vec<PlannedBinary>,
    pub images: Vec<PlannedImage>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedBinary {
    #[serde(flatten)]
    pub request: BinaryRequest,
    pub path: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedImage {
    pub spec: ImageSpec,
    pub layers: Vec<PlannedLayer>,
    /// The key of the image's inputs, from git's index, when the tree is
    /// clean (`commands::input_keys`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_key: Option<lane_core::id::Digest>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedLayer {
    pub name: String,
    pub entries: Vec<PlannedEntry>,
}

/// An entry as the plan shows it. Binaries are sized after cargo ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedEntry {
    pub path: String,
    pub kind: &'static str,
    pub mode: String,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}
