//! `cargo xtask drift`: builds the images, reads their OCI layouts and the
//! provider index file, and runs the pure analysis of `lane_core::drift`
//! (the curated dependency manifest against what the binaries really load).
//! See docs/drift.md.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::adapters::apt;
use crate::adapters::workspace::Workspace;
use crate::commands::build::{self, BuildOptions};
use crate::report::Reporter;
use lane_core::contents::ContentsQuery;
use lane_core::drift::{
    ContentsState, CuratedManifest, DriftReport, ImageFs, ProviderIndex, RuntimeFacts, analyse,
    contents_query, name_providers,
};

/// The human-readable report: one block per image.
pub fn render(report: &DriftReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for i in &report.images {
        let state = if i.ok { "ok" } else { "DRIFT" };
        let _ = writeln!(
            out,
            "{}\t{state}\t{} ELF objects, {} missing libraries, {} missing interpreters, {} malformed, {} unused packages",
            i.image,
            i.objects.len(),
            i.missing_libraries.len(),
            i.missing_interpreters.len(),
            i.malformed.len(),
            i.unused_packages.len()
        );
        for o in &i.objects {
            if o.needed.is_empty() && o.interpreter.is_none() {
                continue;
            }
            let pkgs = if o.depends_on.is_empty() {
                "-".to_string()
            } else {
                o.depends_on.join(", ")
            };
            let _ = writeln!(out, "  {} ({}): packages {pkgs}", o.path, o.kind);
        }
        for m in &i.missing_interpreters {
            let _ = writeln!(
                out,
                "  missing interpreter: {} needs {}",
                m.binary, m.interpreter
            );
        }
        for m in &i.missing_libraries {
            let pkg = if m.providers.is_empty() {
                "unknown package".to_string()
            } else {
                format!("package {}", m.providers.join(" or "))
            };
            let _ = writeln!(
                out,
                "  missing library: {} needs {} (needed by {}, {}; {pkg})",
                m.binary, m.library, m.needed_by, m.reason
            );
        }
        if i.contents_index == ContentsState::Absent {
            let _ = writeln!(
                out,
                "  (Debian's Contents index is not on this machine: `apt-get install apt-file && apt-get update` lets drift name the packages)"
            );
        }
        for m in &i.malformed {
            let _ = writeln!(out, "  malformed ELF: {}: {}", m.path, m.error);
        }
        for p in &i.unused_packages {
            let _ = writeln!(out, "  unused package: {p}");
        }
    }
    out
}

/// Reads an OCI image layout (first manifest of index.json) into the merged
/// file system and the runtime facts of its config.
pub fn read_layout(layout: &Path) -> Result<(ImageFs, RuntimeFacts)> {
    let (image, runtime, _) = read_layout_with_arch(layout)?;
    Ok((image, runtime))
}

/// As [`read_layout`], plus the config's `architecture` (`amd64`).
fn read_layout_with_arch(layout: &Path) -> Result<(ImageFs, RuntimeFacts, String)> {
    let json = |digest: &str| -> Result<serde_json::Value> {
        let path = blob(layout, digest);
        let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let index_path = layout.join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).with_context(|| {
            format!(
                "reading {}; build the image first (cargo xtask build)",
                index_path.display()
            )
        })?)
        .with_context(|| format!("parsing {}", index_path.display()))?;
    let Some(mdigest) = index["manifests"][0]["digest"].as_str() else {
        bail!("{} lists no manifest", index_path.display());
    };
    let manifest = json(mdigest)?;
    let config = match manifest["config"]["digest"].as_str() {
        Some(d) => json(d)?,
        None => serde_json::Value::Null,
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let c = &config["config"];
    let runtime = RuntimeFacts::from_config(
        &strings(&c["Entrypoint"]),
        &strings(&c["Cmd"]),
        &strings(&c["Env"]),
    );
    let mut image = ImageFs::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let digest = layer["digest"].as_str().unwrap_or_default();
        let media = layer["mediaType"].as_str().unwrap_or_default();
        let path = blob(layout, digest);
        let f = fs::File::open(&path).with_context(|| format!("opening layer {digest}"))?;
        let applied = if media.ends_with("+gzip") || media.ends_with(".gzip") {
            image.apply_layer(flate2::read::GzDecoder::new(f))
        } else if media.ends_with(".tar") || media.ends_with("tar") {
            image.apply_layer(f)
        } else {
            bail!(
                "layer {digest} has media type {media}, which drift cannot read (gzip or plain tar)"
            );
        };
        applied.with_context(|| format!("reading layer {digest} of {}", layout.display()))?;
    }
    let arch = config["architecture"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((image, runtime, arch))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.split(':').next().unwrap_or("sha256"))
        .join(digest.split(':').nth(1).unwrap_or(digest))
}

/// The provider index of the workspace (`lockfiles/library-index.toml`), or
/// an empty one when there is none.
pub fn read_index(path: &Path) -> Result<ProviderIndex> {
    match fs::read_to_string(path) {
        Ok(text) => ProviderIndex::parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProviderIndex::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Builds the images and analyses each one. What is missing is looked up
/// in Debian's Contents index (once for all images of one architecture),
/// unless the hand-kept index names its package.
pub fn drift(
    ws: &Workspace,
    names: &[String],
    index_file: Option<&Path>,
    quiet: bool,
) -> Result<DriftReport> {
    let index_path = index_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ws.root.join("lockfiles/library-index.toml"));
    if index_file.is_some() && !index_path.is_file() {
        bail!(
            "provider index {} does not exist; pass an existing file to --index",
            index_path.display()
        );
    }
    let index = read_index(&index_path)?;
    let mut opts = BuildOptions::for_workspace(ws);
    opts.quiet = quiet;
    let built = build::build(ws, names, &opts)?;
    // (drift, curated manifest, architecture) of each image.
    let mut analysed = Vec::new();
    for b in &built.images {
        if !names.is_empty() && !names.contains(&b.name) {
            continue; // a base built for the requested image
        }
        let (image_fs, runtime, arch) = read_layout_with_arch(&b.layout)?;
        let manifest = CuratedManifest::from_image(&image_fs);
        let drift = analyse(&b.name, &image_fs, &manifest, &index, &runtime);
        analysed.push((drift, manifest, arch));
    }
    let mut queries: BTreeMap<String, ContentsQuery> = BTreeMap::new();
    for (drift, _, arch) in &analysed {
        queries
            .entry(arch.clone())
            .or_default()
            .extend(contents_query(drift, &index));
    }
    let progress = Reporter::new(quiet);
    for (arch, query) in queries.iter().filter(|(_, q)| !q.is_empty()) {
        progress.say(format_args!(
            "drift: looking up {} in Debian's Contents index ({arch})",
            query.names().into_iter().collect::<Vec<_>>().join(", ")
        ));
        let mut with_contents = index.clone();
        match apt::contents_providers(arch, query)? {
            Some(found) => {
                with_contents.contents = found;
                with_contents.contents_state = ContentsState::Consulted;
            }
            None => with_contents.contents_state = ContentsState::Absent,
        }
        for (drift, manifest, _) in analysed.iter_mut().filter(|(_, _, a)| a == arch) {
            if !drift.ok {
                name_providers(drift, manifest, &with_contents);
            }
        }
    }
    Ok(DriftReport {
        images: analysed.into_iter().map(|(d, _, _)| d).collect(),
    })
}
