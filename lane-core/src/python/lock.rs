//! `lockfiles/python.lock`: the wheels of every image's `[python]`
//! requirements and their `Requires-Dist` closure, pinned by file name,
//! size and sha256. No index host is written: wheels are fetched through
//! the machine's own pip configuration, as .debs through its apt.
//!
//! [`resolve`] is the pure resolver: it asks a [`WheelSource`] (the pip
//! adapter in xtask) for the best wheel of a requirement, reads the wheel's
//! metadata from its bytes and follows `Requires-Dist` with the markers
//! evaluated for the image's Python and platform.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::normalize;
use super::requirements::{MarkerEnv, Requirement};
use super::version::Version;
use super::wheel;

pub const LOCK_PATH: &str = "lockfiles/python.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PyLock {
    pub version: u32,
    /// The wheel platform tag pip resolved for (`manylinux_2_36_x86_64`).
    pub platform: String,
    #[serde(default)]
    pub image: Vec<PyLockedImage>,
    #[serde(default)]
    pub wheel: Vec<LockedWheel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PyLockedImage {
    pub name: String,
    /// The image's interpreter version (from its Debian packages).
    pub python: String,
    /// As listed in the image's `[python] requirements`.
    pub requirements: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedWheel {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// `Requires-Dist` as the wheel's METADATA declares it (all of them,
    /// markers included).
    pub requires_dist: Vec<String>,
    /// Top-level import names the wheel installs.
    pub modules: Vec<String>,
    /// The image requirements whose closure contains this wheel.
    pub required_by: Vec<String>,
}

impl PyLock {
    pub fn image(&self, name: &str) -> Option<&PyLockedImage> {
        self.image.iter().find(|i| i.name == name)
    }

    /// The locked wheels one image installs, in name order.
    pub fn wheels_of(&self, image: &str) -> Option<Vec<&LockedWheel>> {
        let img = self.image(image)?;
        Some(
            self.wheel
                .iter()
                .filter(|w| w.required_by.iter().any(|r| img.requirements.contains(r)))
                .collect(),
        )
    }

    /// Every locked distribution that installs top-level module `top`
    /// (the lock's candidates, for naming what would provide a module).
    pub fn candidates(&self, top: &str) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for w in &self.wheel {
            if w.modules.iter().any(|m| m == top) {
                out.insert(format!("{}=={}", w.name, w.version));
            }
        }
        out.into_iter().collect()
    }
}

const HEADER: &str = "# Python wheels of the images' [python] requirements, with their\n# Requires-Dist closure (markers evaluated for each image's Python).\n# Written by `cargo xtask lock`; checked by `cargo xtask lock --check`.\n# Wheels are fetched through the machine's pip configuration with their\n# hash required, and verified against size and sha256 below; no index host\n# is recorded here.\n\n";

pub fn render(lock: &PyLock) -> Result<String> {
    crate::lockfile::render(HEADER, LOCK_PATH, lock)
}

pub fn parse(text: &str) -> Result<PyLock> {
    let lock = crate::lockfile::parse(LOCK_PATH, text, |l: &PyLock| l.version)?;
    for w in &lock.wheel {
        if w.sha256.parse::<crate::id::Digest>().is_err() {
            bail!(
                "{LOCK_PATH}: wheel {} has an invalid sha256 {:?}; run cargo xtask lock",
                w.filename,
                w.sha256
            );
        }
        wheel::parse_filename(&w.filename)
            .with_context(|| format!("{LOCK_PATH}: wheel {}", w.name))?;
    }
    Ok(lock)
}

/// One difference per line; empty when equal.
pub fn diff(old: &PyLock, new: &PyLock) -> Vec<String> {
    let mut out = Vec::new();
    if old.platform != new.platform {
        out.push(format!(
            "platform changed: {} -> {}",
            old.platform, new.platform
        ));
    }
    let imgs = |l: &PyLock| -> BTreeMap<String, PyLockedImage> {
        l.image
            .iter()
            .map(|i| (i.name.clone(), i.clone()))
            .collect()
    };
    let (o, n) = (imgs(old), imgs(new));
    for (name, ni) in &n {
        match o.get(name) {
            None => out.push(format!("image {name} is not in the Python lock")),
            Some(oi) => {
                out.extend(crate::lockfile::list_changes(
                    name,
                    "requirement",
                    &oi.requirements,
                    &ni.requirements,
                ));
                if oi.python != ni.python {
                    out.push(format!(
                        "image {name}: Python changed: {} -> {}",
                        oi.python, ni.python
                    ));
                }
            }
        }
    }
    for name in o.keys().filter(|k| !n.contains_key(*k)) {
        out.push(format!(
            "image {name} is locked but has no [python] table any more"
        ));
    }
    let key = |w: &LockedWheel| (normalize(&w.name), w.version.clone());
    let ow: BTreeMap<_, _> = old.wheel.iter().map(|w| (key(w), w)).collect();
    let nw: BTreeMap<_, _> = new.wheel.iter().map(|w| (key(w), w)).collect();
    for (k, w) in &nw {
        match ow.get(k) {
            None => out.push(format!(
                "wheel {} {} added (required by {})",
                w.name,
                w.version,
                w.required_by.join(", ")
            )),
            Some(o) if o != w => {
                let mut what = Vec::new();
                if o.sha256 != w.sha256 || o.size != w.size || o.filename != w.filename {
                    what.push(format!(
                        "{} {} -> {} {}",
                        o.filename, o.sha256, w.filename, w.sha256
                    ));
                }
                if o.requires_dist != w.requires_dist {
                    what.push("Requires-Dist".to_string());
                }
                if o.required_by != w.required_by {
                    what.push(format!(
                        "required_by [{}] -> [{}]",
                        o.required_by.join(", "),
                        w.required_by.join(", ")
                    ));
                }
                if o.modules != w.modules {
                    what.push("modules".into());
                }
                out.push(format!(
                    "wheel {} {} changed: {}",
                    w.name,
                    w.version,
                    what.join("; ")
                ));
            }
            Some(_) => {}
        }
    }
    for (k, w) in &ow {
        if !nw.contains_key(k) {
            out.push(format!(
                "wheel {} {} removed (was required by {})",
                w.name,
                w.version,
                w.required_by.join(", ")
            ));
        }
    }
    out
}

/// Where the resolver gets wheels: the best wheel for a requirement string
/// (`six>=1.5`), as file name and bytes.
pub trait WheelSource {
    fn best(&mut self, requirement: &str) -> Result<(String, Vec<u8>)>;
}

/// What one image asks for.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub name: String,
    /// `3.11.2`: the interpreter of the image's Debian packages.
    pub python: String,
    pub requirements: Vec<String>,
}

struct Chosen {
    wheel: LockedWheel,
    version: Version,
    extras: BTreeSet<String>,
    /// (constraint, who asked)
    constraints: Vec<(String, String)>,
}

/// Resolves every image's requirements to a lock. Image requirements must
/// be exact pins (`NAME==VERSION`); pip picks the transitive versions, and
/// every constraint on one distribution must hold for the version chosen.
pub fn resolve(
    images: &[ImageRequest],
    platform: &str,
    machine: &str,
    source: &mut dyn WheelSource,
) -> Result<PyLock> {
    let mut wheels: BTreeMap<(String, String), LockedWheel> = BTreeMap::new();
    let mut locked_images = Vec::new();
    for img in images {
        let env = MarkerEnv::cpython_linux(&img.python, machine);
        let mut roots = Vec::new();
        for r in &img.requirements {
            let req = Requirement::parse(r)
                .with_context(|| format!("image {}: [python] requirements", img.name))?;
            if req.pinned_version().is_none() || req.url.is_some() {
                bail!(
                    "image {}: requirement {r:?} is not pinned; write it as \"NAME==VERSION\" (the lock pins its dependencies)",
                    img.name
                );
            }
            roots.push(req);
        }
        let mut extra_constraints: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let chosen = 'rounds: loop {
            let mut chosen: BTreeMap<String, Chosen> = BTreeMap::new();
            let mut queue: VecDeque<(Requirement, String, String)> = roots
                .iter()
                .map(|r| (r.clone(), r.text.clone(), "image.toml".to_string()))
                .collect();
            while let Some((req, root, from)) = queue.pop_front() {
                let key = req.key();
                if let Some(c) = chosen.get_mut(&key) {
                    c.constraints.push((req.text.clone(), from.clone()));
                    if !c.wheel.required_by.contains(&root) {
                        c.wheel.required_by.push(root.clone());
                    }
                    let new_extras: Vec<String> = req
                        .extras
                        .iter()
                        .filter(|e| !c.extras.contains(*e))
                        .cloned()
                        .collect();
                    if !req.allows(&c.version) {
                        let pinned_by_root = roots.iter().any(|r| r.key() == key);
                        if pinned_by_root {
                            bail!(
                                "image {}: {} {} is pinned in image.toml, but {from} requires {}; change the pin",
                                img.name,
                                c.wheel.name,
                                c.wheel.version,
                                req.text
                            );
                        }
                        let all = extra_constraints.entry(key.clone()).or_default();
                        if all.contains(&req.text) {
                            bail!(
                                "image {}: no version of {} satisfies every constraint: {}",
                                img.name,
                                req.name,
                                c.constraints
                                    .iter()
                                    .map(|(c, f)| format!("{c} (from {f})"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            );
                        }
                        all.push(req.text.clone());
                        continue 'rounds;
                    }
                    if !new_extras.is_empty() {
                        c.extras.extend(new_extras.iter().cloned());
                        let extras = c.extras.clone();
                        let name = c.wheel.name.clone();
                        for d in &c.wheel.requires_dist {
                            let dep = Requirement::parse(d)?;
                            let only_extra =
                                dep.applies(&env, &extras) && !dep.applies(&env, &BTreeSet::new());
                            if only_extra {
                                queue.push_back((dep, root.clone(), name.clone()));
                            }
                        }
                    }
                    continue;
                }
                let mut spec: Vec<String> =
                    req.specifiers.iter().map(ToString::to_string).collect();
                for c in extra_constraints.get(&key).into_iter().flatten() {
                    spec.extend(
                        Requirement::parse(c)?
                            .specifiers
                            .iter()
                            .map(ToString::to_string),
                    );
                }
                let ask = format!("{}{}", req.name, spec.join(","));
                let (filename, bytes) = source.best(&ask).with_context(|| {
                    format!("image {}: fetching {ask} (required by {from})", img.name)
                })?;
                let w = wheel::read(&filename, &bytes)?;
                let version = Version::parse(&w.metadata.version)?;
                if !req.allows(&version) {
                    bail!("pip returned {filename} for {ask}, which does not satisfy it");
                }
                if let Some(rp) = &w.metadata.requires_python
                    && let Ok(specs) = super::version::parse_specifiers(rp)
                    && let Ok(pv) = Version::parse(&img.python)
                    && !super::version::satisfies(&pv, &specs)
                {
                    bail!(
                        "image {}: {filename} requires Python {rp}, the image has {}",
                        img.name,
                        img.python
                    );
                }
                let modules = wheel::top_level_modules(
                    w.files
                        .iter()
                        .map(|f| f.path.as_str())
                        .filter(|p| !p.starts_with(&format!("{}/", w.dist_info))),
                );
                let extras: BTreeSet<String> = req.extras.iter().cloned().collect();
                for d in &w.metadata.requires_dist {
                    let dep = Requirement::parse(d)
                        .with_context(|| format!("{filename}: Requires-Dist {d:?}"))?;
                    if dep.applies(&env, &extras) {
                        queue.push_back((dep, root.clone(), w.metadata.name.clone()));
                    }
                }
                chosen.insert(
                    key,
                    Chosen {
                        wheel: LockedWheel {
                            name: w.metadata.name.clone(),
                            version: w.metadata.version.clone(),
                            filename: filename.clone(),
                            size: bytes.len() as u64,
                            sha256: crate::id::Digest::of(&bytes).to_string(),
                            requires_dist: w.metadata.requires_dist.clone(),
                            modules,
                            required_by: vec![root.clone()],
                        },
                        version,
                        extras,
                        constraints: vec![(req.text.clone(), from.clone())],
                    },
                );
            }
            break chosen;
        };
        for (_, c) in chosen {
            let k = (normalize(&c.wheel.name), c.wheel.version.clone());
            match wheels.get_mut(&k) {
                Some(w) => {
                    for r in c.wheel.required_by {
                        if !w.required_by.contains(&r) {
                            w.required_by.push(r);
                        }
                    }
                }
                None => {
                    wheels.insert(k, c.wheel);
                }
            }
        }
        locked_images.push(PyLockedImage {
            name: img.name.clone(),
            python: img.python.clone(),
            requirements: img.requirements.clone(),
        });
    }
    let mut wheel: Vec<LockedWheel> = wheels.into_values().collect();
    for w in &mut wheel {
        w.required_by.sort();
    }
    locked_images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PyLock {
        version: 1,
        platform: platform.to_string(),
        image: locked_images,
        wheel,
    })
}

/// A [`WheelSource`] that offers only the wheels of a committed lock: for
/// a requirement, the highest locked version of that distribution that
/// satisfies it, its bytes from `fetch` (which verifies them against the
/// lock). Resolving the images against it is the check that the lock is
/// closed; no index is asked.
pub struct InLock<'a, F: FnMut(&LockedWheel) -> Result<Vec<u8>>> {
    pub lock: &'a PyLock,
    pub fetch: F,
}

impl<F: FnMut(&LockedWheel) -> Result<Vec<u8>>> WheelSource for InLock<'_, F> {
    fn best(&mut self, requirement: &str) -> Result<(String, Vec<u8>)> {
        let req = Requirement::parse(requirement)?;
        let mut best: Option<(Version, &LockedWheel)> = None;
        for w in self
            .lock
            .wheel
            .iter()
            .filter(|w| normalize(&w.name) == req.key())
        {
            let Ok(v) = Version::parse(&w.version) else {
                continue;
            };
            if req.allows(&v) && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, w));
            }
        }
        let Some((_, w)) = best else {
            bail!(
                "no wheel in {LOCK_PATH} satisfies {requirement}; run cargo xtask lock and commit the result"
            );
        };
        Ok((w.filename.clone(), (self.fetch)(w)?))
    }
}

/// Whether the committed `lock` satisfies the images on its own: every
/// requirement locked, and every `Requires-Dist` of each locked wheel that
/// applies to the image's interpreter (`images[].python`) and `machine` met
/// by a locked wheel (read from its verified bytes, `fetch`). What an index
/// offers today is not asked. One line per problem; empty when satisfied.
pub fn unsatisfied<F: FnMut(&LockedWheel) -> Result<Vec<u8>>>(
    lock: &PyLock,
    images: &[ImageRequest],
    machine: &str,
    fetch: F,
) -> Vec<String> {
    let mut source = InLock { lock, fetch };
    match resolve(images, &lock.platform, machine, &mut source) {
        Ok(resolved) => diff(lock, &resolved),
        Err(e) => vec![format!("{e:#}")],
    }
}

/// Checks fetched bytes against the lock before anything opens them.
pub fn verify(w: &LockedWheel, bytes: &[u8], origin: &str) -> Result<()> {
    let actual = crate::id::Digest::of(bytes);
    if actual != w.sha256 || bytes.len() as u64 != w.size {
        bail!(
            "wheel {} ({} {}): the {origin} does not match {LOCK_PATH}: expected {} ({} bytes), actual {actual} ({} bytes); nothing was built. Delete the file to fetch it again, or run cargo xtask lock if the lock is stale",
            w.filename,
            w.name,
            w.version,
            w.sha256,
            w.size,
            bytes.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::wheel::tests::{WHEEL, make_wheel};

    struct Fake(BTreeMap<&'static str, Vec<u8>>, Vec<String>);

    impl WheelSource for Fake {
        fn best(&mut self, requirement: &str) -> Result<(String, Vec<u8>)> {
            self.1.push(requirement.to_string());
            let name = requirement.split(['=', '>', '<', '!', '~']).next().unwrap();
            let (f, b) = self
                .0
                .iter()
                .filter(|(f, _)| f.starts_with(&format!("{name}-")))
                .rfind(|(f, _)| {
                    let v = Version::parse(f.split('-').nth(1).unwrap()).unwrap();
                    Requirement::parse(requirement).unwrap().allows(&v)
                })
                .with_context(|| format!("no wheel for {requirement}"))?;
            Ok((f.to_string(), b.clone()))
        }
    }

    fn wheel(name: &str, version: &str, requires: &[&str]) -> Vec<u8> {
        let mut meta = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
        for r in requires {
            meta.push_str(&format!("Requires-Dist: {r}\n"));
        }
        let module = format!("{name}.py");
        let di = |f: &str| format!("{name}-{version}.dist-info/{f}");
        let (m, w) = (di("METADATA"), di("WHEEL"));
        make_wheel(
            &[(&module, b"x = 1\n"), (&m, meta.as_bytes()), (&w, WHEEL)],
            None,
        )
    }

    fn source() -> Fake {
        let mut m = BTreeMap::new();
        m.insert(
            "app-1.0-py3-none-any.whl",
            wheel(
                "app",
                "1.0",
                &[
                    "six>=1.5",
                    "colorama ; sys_platform == 'win32'",
                    "extra_dep ; extra == 'x'",
                ],
            ),
        );
        m.insert("six-1.16.0-py3-none-any.whl", wheel("six", "1.16.0", &[]));
        m.insert("six-1.17.0-py3-none-any.whl", wheel("six", "1.17.0", &[]));
        m.insert(
            "other-2.0-py3-none-any.whl",
            wheel("other", "2.0", &["six<1.17"]),
        );
        Fake(m, Vec::new())
    }

    fn req(name: &str, reqs: &[&str]) -> ImageRequest {
        ImageRequest {
            name: name.into(),
            python: "3.11.2".into(),
            requirements: reqs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn closure_follows_requires_dist_with_markers() {
        let mut src = source();
        let lock = resolve(
            &[req("a", &["app==1.0"])],
            "manylinux_2_36_x86_64",
            "x86_64",
            &mut src,
        )
        .unwrap();
        let names: Vec<(&str, &str)> = lock
            .wheel
            .iter()
            .map(|w| (w.name.as_str(), w.version.as_str()))
            .collect();
        assert_eq!(names, [("app", "1.0"), ("six", "1.17.0")]);
        assert_eq!(lock.wheel[1].required_by, ["app==1.0"]);
        assert_eq!(lock.wheel[0].modules, ["app"]);
        let text = render(&lock).unwrap();
        assert!(!text.contains("http"), "{text}");
        assert_eq!(parse(&text).unwrap(), lock);
        assert_eq!(lock.wheels_of("a").unwrap().len(), 2);
        assert_eq!(lock.candidates("six"), ["six==1.17.0"]);
    }

    #[test]
    fn a_tighter_constraint_is_asked_again() {
        let mut src = source();
        let lock = resolve(
            &[req("a", &["app==1.0", "other==2.0"])],
            "p",
            "x86_64",
            &mut src,
        )
        .unwrap();
        let six = lock.wheel.iter().find(|w| w.name == "six").unwrap();
        assert_eq!(six.version, "1.16.0");
        assert!(src.1.contains(&"six>=1.5,<1.17".to_string()), "{:?}", src.1);
    }

    #[test]
    fn unpinned_roots_and_diffs() {
        let e = resolve(&[req("a", &["app>=1"])], "p", "x86_64", &mut source()).unwrap_err();
        assert!(format!("{e:#}").contains("is not pinned"), "{e:#}");
        let old = resolve(&[req("a", &["app==1.0"])], "p", "x86_64", &mut source()).unwrap();
        let new = resolve(
            &[req("a", &["app==1.0", "other==2.0"])],
            "p",
            "x86_64",
            &mut source(),
        )
        .unwrap();
        let d = diff(&old, &new);
        assert!(
            d.contains(&"image a: requirement other==2.0 is requested but not locked".to_string()),
            "{d:?}"
        );
        assert!(
            d.iter().any(|l| l.starts_with("wheel six 1.16.0 added")),
            "{d:?}"
        );
        assert!(diff(&new, &new).is_empty());
        let bytes = wheel("six", "1.17.0", &[]);
        let w = &old.wheel[1];
        assert!(verify(w, &bytes, "download").is_ok());
        let e = verify(w, b"junk", "cached copy").unwrap_err().to_string();
        assert!(e.contains("does not match lockfiles/python.lock"), "{e}");
    }
}

/// Hostile `lockfiles/python.lock` files (docs/fault-matrix-parsers.md): no panic, every
/// error names the file.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, clear_error, mutated_text};
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("../../../lockfiles/python.lock");

    fn check(text: &str) -> Result<(), TestCaseError> {
        match parse(text) {
            Ok(lock) => {
                let _ = diff(&lock, &parse(SAMPLE).unwrap());
                for i in &lock.image {
                    let _ = lock.wheels_of(&i.name);
                }
            }
            Err(e) => clear_error(&e, LOCK_PATH)?,
        }
        Ok(())
    }

    #[test]
    fn the_sample_parses() {
        parse(SAMPLE).unwrap();
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn python_lock_arbitrary_text(text in any::<String>()) {
            check(&text)?;
        }

        #[test]
        fn python_lock_mutated(text in mutated_text(SAMPLE)) {
            check(&text)?;
        }
    }
}
