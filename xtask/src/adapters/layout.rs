//! OCI image layouts on disk (`target/images/<name>/`, the local store's
//! repositories): the one place that reads and writes them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lane_core::distribution::LocalImage;

/// Where a layout keeps the blob `digest`.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Reads `target/images/<name>/` and checks every blob's size.
pub fn read_image(name: &str, layout: &Path) -> Result<LocalImage> {
    let index = fs::read(layout.join("index.json"))
        .with_context(|| format!("reading {}/index.json", layout.display()))?;
    let image = LocalImage::parse(name, layout, &index, &|d| {
        fs::read(blob_path(layout, d))
            .with_context(|| format!("reading blob {d} from {}", layout.display()))
    })?;
    for b in &image.blobs {
        let p = blob_path(layout, &b.digest);
        let len = fs::metadata(&p)
            .with_context(|| format!("the layout {} lacks blob {}", layout.display(), b.digest))?
            .len();
        if len != b.size {
            bail!(
                "blob {} in {} has {len} bytes, the manifest says {}; rebuild with cargo xtask build {name}",
                b.digest,
                layout.display(),
                b.size
            );
        }
    }
    Ok(image)
}
