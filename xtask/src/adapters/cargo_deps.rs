//! The crates compiled into one workspace binary: `cargo metadata`'s
//! resolve graph (platform-filtered for the target), walked from the
//! binary's package along normal dependencies (not dev, not build) with the
//! features that build enables, resolved here as cargo does: a package's
//! requested features expand through its `[features]` table (`dep:x`,
//! `x/f`, weak `x?/f`, implicit features of optional dependencies), and an
//! optional dependency is followed only when a feature enables it.
//! Checksums come from Cargo.lock, licenses from the manifests.
//!
//! Proc-macro crates are normal dependencies and are listed (as `cargo tree
//! -e normal` lists them): their code shapes the binary though it runs at
//! build time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use cargo_metadata::{CargoOpt, DependencyKind, Metadata, MetadataCommand, Package, PackageId};
use lane_core::id::Digest;
use lane_core::sbom::Crate;

/// What is built: `cargo build -p PACKAGE --bin BIN --features ...`.
#[derive(Debug, Clone)]
pub struct BinarySpec {
    pub package: String,
    pub bin: String,
    pub features: Vec<String>,
    pub default_features: bool,
    /// The target triple (the host's for the lane's builds).
    pub target: String,
}

/// Every crate compiled into the binary, sorted by name and version.
pub fn compiled_crates(workspace_root: &Path, spec: &BinarySpec) -> Result<Vec<Crate>> {
    let meta = MetadataCommand::new()
        .manifest_path(workspace_root.join("Cargo.toml"))
        // Every feature of the members, so the resolve holds every
        // dependency any feature could enable; the walk below picks.
        .features(CargoOpt::AllFeatures)
        .other_options(vec!["--filter-platform".to_string(), spec.target.clone()])
        .exec()
        .with_context(|| {
            format!(
                "running cargo metadata in {} for the crates of {}",
                workspace_root.display(),
                spec.bin
            )
        })?;
    let lock = std::fs::read_to_string(workspace_root.join("Cargo.lock")).with_context(|| {
        format!(
            "reading {}/Cargo.lock; run cargo generate-lockfile",
            workspace_root.display()
        )
    })?;
    let ids = walk(&meta, spec)?;
    crates_of(&meta, &ids, &checksums(&lock)?)
}

/// Cargo.lock's checksums by (name, version).
pub fn checksums(lock: &str) -> Result<BTreeMap<(String, String), Digest>> {
    #[derive(serde::Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        name: String,
        version: String,
        checksum: Option<String>,
    }
    let lock: Lock = toml::from_str(lock).context("parsing Cargo.lock")?;
    let mut out = BTreeMap::new();
    for p in lock.package {
        if let Some(c) = p.checksum {
            let d: Digest = format!("sha256:{c}")
                .parse()
                .with_context(|| format!("Cargo.lock: checksum of {} {}", p.name, p.version))?;
            out.insert((p.name, p.version), d);
        }
    }
    Ok(out)
}

fn walk(meta: &Metadata, spec: &BinarySpec) -> Result<BTreeSet<PackageId>> {
    let packages: BTreeMap<&PackageId, &Package> =
        meta.packages.iter().map(|p| (&p.id, p)).collect();
    let root = meta
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == spec.package)
        .with_context(|| {
            format!(
                "no workspace package {:?}; the binaries of an image name a package of the workspace's members",
                spec.package
            )
        })?;
    if !root
        .targets
        .iter()
        .any(|t| t.is_bin() && t.name == spec.bin)
    {
        bail!("package {} has no binary {:?}", spec.package, spec.bin);
    }
    let resolve = meta
        .resolve
        .as_ref()
        .context("cargo metadata returned no resolve graph")?;
    let nodes: BTreeMap<&PackageId, &cargo_metadata::Node> =
        resolve.nodes.iter().map(|n| (&n.id, n)).collect();

    let mut feats: BTreeMap<PackageId, BTreeSet<String>> = BTreeMap::new();
    let mut start: BTreeSet<String> = spec.features.iter().cloned().collect();
    if spec.default_features && root.features.contains_key("default") {
        start.insert("default".into());
    }
    feats.insert(root.id.clone(), start);
    loop {
        let mut changed = false;
        let reached: Vec<PackageId> = feats.keys().cloned().collect();
        for pid in reached {
            let pkg = packages[&pid];
            let (deps_on, dep_feats) = expand(pkg, &feats[&pid]);
            let Some(node) = nodes.get(&pid) else {
                continue;
            };
            for dep in &pkg.dependencies {
                if dep.kind != DependencyKind::Normal {
                    continue;
                }
                let key = dep.rename.clone().unwrap_or_else(|| dep.name.clone());
                if dep.optional && !deps_on.contains(&key) {
                    continue;
                }
                // The resolved package of this dependency (absent when the
                // platform filter dropped it).
                let found = node.deps.iter().find(|nd| {
                    let p = packages[&nd.pkg];
                    nd.dep_kinds
                        .iter()
                        .any(|k| k.kind == DependencyKind::Normal)
                        && match &dep.rename {
                            Some(r) => nd.name == r.replace('-', "_"),
                            None => p.name.as_str() == dep.name,
                        }
                        && dep.req.matches(&p.version)
                });
                let Some(nd) = found else { continue };
                let target = packages[&nd.pkg];
                let mut want: BTreeSet<String> = dep.features.iter().cloned().collect();
                if dep.uses_default_features && target.features.contains_key("default") {
                    want.insert("default".into());
                }
                for (d, f) in &dep_feats {
                    if *d == key {
                        want.insert(f.clone());
                    }
                }
                let is_new = !feats.contains_key(&nd.pkg);
                let entry = feats.entry(nd.pkg.clone()).or_default();
                let before = entry.len();
                entry.extend(want);
                changed |= is_new || entry.len() != before;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(feats.into_keys().collect())
}

/// Expands a package's enabled features: the optional dependencies they
/// turn on, and the (dependency, feature) pairs they request.
fn expand(pkg: &Package, enabled: &BTreeSet<String>) -> (BTreeSet<String>, Vec<(String, String)>) {
    let explicit_dep_syntax = pkg
        .features
        .values()
        .flatten()
        .any(|v| v.starts_with("dep:"));
    let optional: BTreeSet<String> = pkg
        .dependencies
        .iter()
        .filter(|d| d.optional)
        .map(|d| d.rename.clone().unwrap_or_else(|| d.name.clone()))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = enabled.iter().cloned().collect();
    let mut deps_on = BTreeSet::new();
    let mut strong: Vec<(String, String)> = Vec::new();
    let mut weak: Vec<(String, String)> = Vec::new();
    while let Some(f) = todo.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        if let Some(dep) = f.strip_prefix("dep:") {
            deps_on.insert(dep.to_string());
            continue;
        }
        if let Some((d, sub)) = f.split_once('/') {
            match d.strip_suffix('?') {
                Some(d) => weak.push((d.to_string(), sub.to_string())),
                None => {
                    deps_on.insert(d.to_string());
                    strong.push((d.to_string(), sub.to_string()));
                    // `x/f` also enables the feature `x` when x is one.
                    if pkg.features.contains_key(d) {
                        todo.push(d.to_string());
                    }
                }
            }
            continue;
        }
        // An optional dependency's implicit feature.
        if !explicit_dep_syntax && optional.contains(&f) {
            deps_on.insert(f.clone());
        }
        if let Some(items) = pkg.features.get(&f) {
            todo.extend(items.iter().cloned());
        }
    }
    strong.extend(weak.into_iter().filter(|(d, _)| deps_on.contains(d)));
    (deps_on, strong)
}

fn crates_of(
    meta: &Metadata,
    ids: &BTreeSet<PackageId>,
    sums: &BTreeMap<(String, String), Digest>,
) -> Result<Vec<Crate>> {
    let mut out: Vec<Crate> = meta
        .packages
        .iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| {
            let version = p.version.to_string();
            Crate {
                name: p.name.to_string(),
                checksum: sums.get(&(p.name.to_string(), version.clone())).cloned(),
                version,
                source: p.source.as_ref().map(|s| s.repr.clone()),
                license: p.license.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xshell::{Shell, cmd};

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    fn host() -> String {
        let sh = Shell::new().unwrap();
        let v = cmd!(sh, "rustc -vV").read().unwrap();
        v.lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap()
            .to_string()
    }

    /// `cargo tree -p PACKAGE -e normal --prefix none` as (name, version).
    fn cargo_tree(package: &str, target: &str) -> BTreeSet<(String, String)> {
        let sh = Shell::new().unwrap();
        sh.change_dir(root());
        let out = cmd!(
            sh,
            "cargo tree --locked -p {package} -e normal --prefix none --target {target}"
        )
        .read()
        .unwrap();
        out.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?;
                let version = w.next()?.strip_prefix('v')?;
                Some((name.to_string(), version.to_string()))
            })
            .collect()
    }

    fn ours(package: &str, bin: &str, target: &str) -> Vec<Crate> {
        compiled_crates(
            &root(),
            &BinarySpec {
                package: package.into(),
                bin: bin.into(),
                features: vec![],
                default_features: true,
                target: target.into(),
            },
        )
        .unwrap()
    }

    fn names(cs: &[Crate]) -> BTreeSet<(String, String)> {
        cs.iter()
            .map(|c| (c.name.clone(), c.version.clone()))
            .collect()
    }

    #[test]
    fn hello_is_exactly_what_cargo_tree_says() {
        let host = host();
        let got = ours("hello", "hello", &host);
        assert_eq!(names(&got), cargo_tree("hello", &host));
        let hello = got.iter().find(|c| c.name == "hello").unwrap();
        assert_eq!(hello.source, None);
        assert_eq!(hello.license.as_deref(), Some("Apache-2.0"));
    }

    /// A real graph: optional dependencies, features, platform-specific
    /// dependencies and proc-macros.
    #[test]
    fn xtask_matches_cargo_tree_with_checksums_and_licenses() {
        let host = host();
        let got = ours("xtask", "xtask", &host);
        let want = cargo_tree("xtask", &host);
        let got_names = names(&got);
        assert_eq!(
            got_names.difference(&want).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "listed but not compiled"
        );
        assert_eq!(
            want.difference(&got_names).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "compiled but not listed"
        );
        for c in got.iter().filter(|c| c.source.is_some()) {
            assert!(
                c.checksum.is_some(),
                "{} {} has no checksum",
                c.name,
                c.version
            );
        }
        let serde = got.iter().find(|c| c.name == "serde").unwrap();
        assert_eq!(serde.license.as_deref(), Some("MIT OR Apache-2.0"));
        // Dev- and build-only crates are not in it: windows-only crates are
        // filtered by platform.
        assert!(
            !got.iter()
                .any(|c| c.name == "winapi" || c.name == "windows-sys")
        );
    }

    #[test]
    fn an_unknown_binary_is_an_error_that_names_it() {
        let e = compiled_crates(
            &root(),
            &BinarySpec {
                package: "hello".into(),
                bin: "nope".into(),
                features: vec![],
                default_features: true,
                target: host(),
            },
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no binary \"nope\""), "{e:#}");
    }
}
