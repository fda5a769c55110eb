//! `cargo xtask bench`: the lane's speed and memory, side by side with the
//! reference tools, in the same run on the same machine.
//!
//! Inputs are generated here (a deterministic tree of mixed file sizes), so
//! every run measures the same bytes. Each figure is min/median/max over
//! several runs. Timings are wall-clock; peak memory is the child's
//! `ru_maxrss` from `wait4`, which covers the whole process tree it waited for.

use std::process::ExitCode;

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::adapters::registry_server::RegistryServer;
use crate::adapters::workspace::Workspace;
use crate::lane::build::{self, BuildOptions};
use lane_core::distribution::BuiltImage;
use lane_core::distribution::CacheStats;
use lane_core::layer::{self, Entry, EntryKind};
use lane_core::spec::{ImagePath, Owner};
use lane_core::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(|a, b| a.total_cmp(b));
        Stat {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

/// One benchmark case: the lane's figure, the reference's, and their ratio
/// (lane / reference; for time and memory, lower is better).
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub name: String,
    pub unit: String,
    pub lane: Stat,
    pub reference_tool: String,
    pub reference: Option<Stat>,
    pub ratio: Option<f64>,
    /// Other measured facts (sizes, bytes read, cache hits).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub quick: bool,
    pub machine: String,
    pub cases: Vec<Case>,
}

/// xorshift64*: a small deterministic generator for the input tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const WORDS: &[&str] = &[
    "layer",
    "digest",
    "manifest",
    "release",
    "image",
    "config",
    "registry",
    "build",
    "service",
    "lock",
    "package",
    "binary",
    "library",
    "provenance",
    "gate",
    "smoke",
    "policy",
    "source",
    "commit",
    "tag",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "with",
    "fn",
    "let",
    "mut",
    "impl",
    "struct",
    "pub",
];

/// Writes `size` bytes of text-like data (words, numbers), with
/// `random_percent` of incompressible bytes mixed in.
fn write_content(
    w: &mut impl Write,
    rng: &mut Rng,
    size: u64,
    random_percent: u64,
) -> io::Result<()> {
    let mut written = 0u64;
    let mut line = Vec::with_capacity(256);
    while written < size {
        line.clear();
        if rng.next() % 100 < random_percent {
            for _ in 0..16 {
                line.extend_from_slice(&rng.next().to_le_bytes());
            }
        } else {
            for _ in 0..(4 + rng.next() % 12) {
                line.extend_from_slice(
                    WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes(),
                );
                line.push(b' ');
            }
            line.extend_from_slice(format!("{}\n", rng.next() % 100_000).as_bytes());
        }
        let n = line.len().min((size - written) as usize);
        w.write_all(&line[..n])?;
        written += n as u64;
    }
    Ok(())
}

/// Generates the mixed tree: many small files, some medium, a few large.
/// `scale` 10 gives about 200 MB; 1 gives about 20 MB.
pub fn generate_tree(dir: &Path, scale: u64) -> Result<u64> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let mut rng = Rng(0x5eed_1a4e_0000_0001);
    let mut total = 0u64;
    let plan: [(u64, u64, u64, u64); 3] = [
        // (count per scale unit, min size, max size, percent random)
        (200, 512, 16 << 10, 5),
        (20, 64 << 10, 1 << 20, 10),
        (1, 6 << 20, 8 << 20, 30),
    ];
    let mut i = 0u64;
    for (count, min, max, random) in plan {
        for _ in 0..count * scale {
            let size = min + rng.next() % (max - min);
            let path = dir.join(format!("d{:02}/s{}/f{i:05}.dat", i % 23, i % 7));
            fs::create_dir_all(path.parent().unwrap_or(dir))?;
            let mut f = BufWriter::new(fs::File::create(&path)?);
            write_content(&mut f, &mut rng, size, random)?;
            f.flush()?;
            total += size;
            i += 1;
        }
    }
    Ok(total)
}

/// How many of the generated images are bases the others build on.
const SCALE_BASES: usize = 5;

/// Writes a workspace of `images` files-only images into `root` (which
/// gets a Cargo.toml, .gitignore and images/; the caller commits it):
/// `SCALE_BASES` bases on scratch, every other image on one of them, each
/// with a data layer (four files of 256 KiB of text-like data, some of it
/// incompressible) and a config layer (four files of 4 KiB): about 1 MiB
/// an image.
/// Deterministic: the same `images` writes the same bytes.
pub fn scale_workspace(root: &Path, images: usize) -> Result<()> {
    fs::create_dir_all(root.join("images"))?;
    fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nmembers = []\n\n[workspace.metadata.lane]\nsource = \"https://git.example.com/scale\"\n",
    )?;
    fs::write(root.join(".gitignore"), "/target\n")?;
    fs::write(root.join("Cargo.lock"), "version = 4\n")?;
    let mut rng = Rng(0x5eed_5ca1_e000_0050);
    for i in 0..images {
        let (name, base) = if i < SCALE_BASES.min(images) {
            (format!("base-{i:02}"), String::new())
        } else {
            (
                format!("app-{i:02}"),
                format!("base = \"workspace://base-{:02}\"\n", i % SCALE_BASES),
            )
        };
        let dir = root.join("images").join(&name);
        let mut toml =
            format!("name = \"{name}\"\nrepository = \"scale/{name}\"\ntags = [\"v1\"]\n{base}");
        for (layer, size) in [("data", 256 << 10), ("config", 4 << 10)] {
            for f in 0..4 {
                let path = dir.join(layer).join(format!("f{f}.txt"));
                fs::create_dir_all(path.parent().unwrap_or(&dir))?;
                let mut w = BufWriter::new(fs::File::create(&path)?);
                write_content(&mut w, &mut rng, size, 5)?;
                w.flush()?;
            }
            toml.push_str(&format!(
                "\n[[layer]]\nname = \"{layer}\"\nfiles = [{{ src = \"{layer}\", dest = \"/srv/{name}/{layer}\" }}]\n"
            ));
        }
        fs::write(dir.join("image.toml"), toml)?;
    }
    Ok(())
}

/// The generated workspace made releasable: the checkout's `base-cc`
/// (pinned Debian packages, locked here by the lane's own `lock`) under the
/// five bases, and on every image a smoke check that runs base-cc's
/// dynamic loader.
pub fn runtime_scale_workspace(checkout: &Path, root: &Path, images: usize) -> Result<()> {
    scale_workspace(root, images)?;
    let from = checkout.join("images/base-cc");
    for rel in crate::adapters::workspace::source_files(&from)? {
        let dst = root.join("images/base-cc").join(&rel);
        fs::create_dir_all(dst.parent().unwrap_or(root))?;
        fs::copy(from.join(&rel), &dst)?;
    }
    let smoke = "\n[[smoke]]\nname = \"loader\"\ncommand = [\"/lib64/ld-linux-x86-64.so.2\", \"--version\"]\nexpect_exit = 0\n";
    for e in fs::read_dir(root.join("images"))? {
        let toml = e?.path().join("image.toml");
        let text = fs::read_to_string(&toml)?;
        if text.contains("name = \"base-cc\"") {
            continue;
        }
        let text = if text.contains("base = ") {
            text
        } else {
            text.replacen(
                "tags = [\"v1\"]\n",
                "tags = [\"v1\"]\nbase = \"workspace://base-cc\"\n",
                1,
            )
        };
        fs::write(&toml, format!("{text}{smoke}"))?;
    }
    // The checkout's release policy (local-store releases need no more).
    fs::create_dir_all(root.join("ci"))?;
    fs::copy(
        checkout.join("ci/release-policy.toml"),
        root.join("ci/release-policy.toml"),
    )?;
    let ws = Workspace {
        root: root.canonicalize()?,
    };
    crate::adapters::apt::lock(&ws.root, &ws.load_images()?)?;
    Ok(())
}

/// A git repository of the generated workspace, committed at a fixed date.
fn scale_checkout(root: &Path, images: usize) -> Result<Workspace> {
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    scale_workspace(root, images)?;
    commit_checkout(root)
}

/// Makes `root` a git repository with everything committed at a fixed date.
fn commit_checkout(root: &Path) -> Result<Workspace> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(root);
    xshell::cmd!(sh, "git init -q -b main").quiet().run()?;
    commit_change(root, "scale")?;
    Ok(Workspace {
        root: root.canonicalize()?,
    })
}

/// The scale cases on a generated workspace of 50 images: a cold build in
/// parallel against the same build with `--jobs 1`, a warm no-change
/// build, and a fresh checkout whose only warm cache is the registry.
fn scale(work: &Path, runs: usize) -> Result<Vec<Case>> {
    const IMAGES: usize = 50;
    let dir = work.join("registry-cache");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let registry = RegistryServer::start(&dir, None)?;
    let location = format!("{}/bench/lane-cache", registry.host());
    let (mut parallel, mut serial, mut warm, mut remote) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut lost_note) = (Vec::new(), String::new());
    // (wall, the lane's CPU, the registry's CPU) of each fresh checkout.
    let mut fresh_cpu: Vec<(f64, f64, f64)> = Vec::new();
    let mut notes = Vec::new();
    for run in 0..runs {
        let a = scale_checkout(&work.join("scale-a"), IMAGES)?;
        let mut opts = BuildOptions::for_workspace(&a);
        opts.quiet = true;
        opts.jobs = 1;
        let t = Instant::now();
        let one = build::build(&a, &[], &opts)?.images;
        serial.push(t.elapsed().as_secs_f64());
        let _ = fs::remove_dir_all(a.root.join("target"));
        opts.jobs = build::default_jobs();
        let t = Instant::now();
        let many = build::build(&a, &[], &opts)?.images;
        parallel.push(t.elapsed().as_secs_f64());
        let digests = |r: &[BuiltImage]| {
            r.iter()
                .map(|i| i.manifest_digest.clone())
                .collect::<Vec<_>>()
        };
        if digests(&one) != digests(&many) {
            bail!("the parallel build of the scale workspace differs from the serial one");
        }
        let t = Instant::now();
        build::build(&a, &[], &opts)?;
        warm.push(t.elapsed().as_secs_f64());
        // Every layer cached, no file's fingerprint known (as after a new
        // clone into the same target/): every file is hashed for the keys,
        // nothing fetched or compressed; the least a fresh checkout does.
        fs::remove_file(a.root.join("target/lane-cache/stat.json"))?;
        let t = Instant::now();
        let l = build::build(&a, &[], &opts)?.images;
        lost.push(t.elapsed().as_secs_f64());
        let (read, compressed) = l.iter().fold((0, 0), |(r, c), i| {
            (r + i.cache.bytes_read, c + i.cache.bytes_compressed)
        });
        if compressed != 0 {
            bail!("a build with every layer cached compressed {compressed} bytes");
        }
        lost_note =
            format!("{read} bytes of files hashed for the keys, 0 compressed, nothing fetched");
        // An authoritative runner fills the registry cache (not timed).
        let _ = fs::remove_dir_all(a.root.join("target"));
        opts.shared_cache = Some(build::SharedCache {
            location: format!("{location}-{run}"),
            writes: true,
        });
        build::build(&a, &[], &opts)?;
        // Another runner: a fresh checkout, only the registry cache warm.
        let b = scale_checkout(&work.join("scale-b"), IMAGES)?;
        let mut bopts = BuildOptions::for_workspace(&b);
        bopts.quiet = true;
        bopts.shared_cache = Some(build::SharedCache {
            location: format!("{location}-{run}"),
            writes: false,
        });
        let cpu = || -> Result<(f64, f64)> {
            Ok((
                crate::adapters::registry_server::cpu_seconds("self", true)?,
                registry.cpu_seconds()?,
            ))
        };
        let (lane0, registry0) = cpu()?;
        let t = Instant::now();
        let fresh = build::build(&b, &[], &bopts)?;
        let wall = t.elapsed().as_secs_f64();
        remote.push(wall);
        let (lane1, registry1) = cpu()?;
        fresh_cpu.push((wall, lane1 - lane0, registry1 - registry0));
        if run == 0 {
            let misses: u64 = fresh.images.iter().map(|i| i.cache.misses).sum();
            let hits: u64 = fresh.images.iter().map(|i| i.cache.remote_hits).sum();
            notes.push(format!(
                "{IMAGES} images, {} layers; fresh checkout: {hits} layers from the registry cache, {misses} compressed",
                many.iter().map(|i| i.layers.len()).sum::<usize>()
            ));
            if digests(&fresh.images) != digests(&one) {
                bail!("the fresh checkout built from the registry cache differs");
            }
        }
    }
    let serial = Stat::of(serial);
    let parallel = Stat::of(parallel);
    let cold = parallel.clone();
    let mut out = vec![Case {
        name: format!(
            "cold build of {IMAGES} generated images, parallel (--jobs {})",
            build::default_jobs()
        ),
        unit: "seconds".into(),
        ratio: Some(ratio(&parallel, &serial)),
        lane: parallel,
        reference_tool: "the same build with --jobs 1".into(),
        reference: Some(serial),
        notes: notes.clone(),
    }];
    // Where a fresh checkout's time goes, on the same cores: the lane's
    // CPU (hashing the files for the keys, downloading, checking and
    // inflating every blob) and the registry's (serving two requests a
    // layer), against the share of the cold build the target allows.
    let n = fresh_cpu.len().max(1) as f64;
    let (wall, lane_cpu, registry_cpu) = fresh_cpu.iter().fold((0.0, 0.0, 0.0), |a, c| {
        (a.0 + c.0 / n, a.1 + c.1 / n, a.2 + c.2 / n)
    });
    let cores = build::default_jobs() as f64;
    let fresh_note = format!(
        "fresh checkout, mean of the runs: {wall:.2} s wall; CPU: the lane {lane_cpu:.2} s, the registry {registry_cpu:.2} s; together at least {:.2} s of wall time on {cores} cores, {:.0}% of the cold build (10% of it: {:.2} s)",
        (lane_cpu + registry_cpu) / cores,
        100.0 * (lane_cpu + registry_cpu) / cores / cold.median,
        cold.median / 10.0
    );
    for (name, v, extra) in [
        ("warm no-change build", warm, None),
        (
            "build with every layer cached, no file fingerprint known",
            lost,
            Some(lost_note),
        ),
        (
            "fresh checkout, only the registry cache warm",
            remote,
            Some(fresh_note),
        ),
    ] {
        let s = Stat::of(v);
        out.push(Case {
            name: format!("{name} ({IMAGES} generated images)"),
            unit: "seconds".into(),
            ratio: Some(ratio(&s, &cold)),
            lane: s,
            reference_tool: "the lane's own cold parallel build".into(),
            reference: Some(cold.clone()),
            notes: notes.iter().cloned().chain(extra).collect(),
        });
    }
    Ok(out)
}

/// A release of `images` generated images (50 in a full run; on base-cc,
/// each with a smoke check) into the local store, against the cold build of
/// the same images.
pub fn release_scale(
    checkout: &Path,
    work: &Path,
    runs: usize,
    images: usize,
) -> Result<Vec<Case>> {
    let root = work.join("scale-release");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    runtime_scale_workspace(checkout, &root, images).context("making the generated workspace")?;
    let ws = commit_checkout(&root).context("committing the generated workspace")?;
    let (mut total, mut bare) = (Vec::new(), Vec::new());
    let mut notes = Vec::new();
    for _ in 0..runs {
        let _ = fs::remove_dir_all(root.join("target"));
        let mut opts = BuildOptions::for_workspace(&ws);
        opts.quiet = true;
        let t = Instant::now();
        build::build(&ws, &[], &opts).context("the cold build of the generated workspace")?;
        bare.push(t.elapsed().as_secs_f64());
        let _ = fs::remove_dir_all(root.join("target"));
        let mut store = crate::adapters::local_store::LocalStore::new(
            root.join(crate::lane::publish::LOCAL_STORE),
        );
        let ropts = crate::lane::release::ReleaseOptions {
            quiet: true,
            ..Default::default()
        };
        let t = Instant::now();
        let r = crate::lane::release::release(&ws, &ropts, &mut store)
            .context("the release of the generated workspace")?;
        total.push(t.elapsed().as_secs_f64());
        if !r.accepted {
            bail!(
                "the release of the generated workspace was rejected: {}",
                crate::lane::release::summary(&r)
            );
        }
        notes = vec![
            format!(
                "{} images released (all accepted), every gate run on each",
                r.images.len()
            ),
            stages_note(&r),
        ];
    }
    let (lane, reference) = (Stat::of(total), Stat::of(bare));
    Ok(vec![Case {
        name: format!("release of {images} generated images on base-cc (local store)"),
        unit: "seconds".into(),
        ratio: Some(ratio(&lane, &reference)),
        lane,
        reference_tool: "a cold build of the same images".into(),
        reference: Some(reference),
        notes,
    }])
}

/// Commits every change in `root` at a fixed date.
fn commit_change(root: &Path, message: &str) -> Result<()> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(root);
    sh.set_var("GIT_AUTHOR_DATE", "2026-01-02T03:04:05Z");
    sh.set_var("GIT_COMMITTER_DATE", "2026-01-02T03:04:05Z");
    let id = [
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@example.com",
    ];
    xshell::cmd!(sh, "git {id...} add -A").quiet().run()?;
    xshell::cmd!(sh, "git {id...} commit -q -m {message}")
        .quiet()
        .run()?;
    Ok(())
}

/// A `git clone` of `from` at `to` (replaced): another runner's checkout,
/// with an empty `target/`.
fn clone_checkout(from: &Path, to: &Path) -> Result<Workspace> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    let sh = xshell::Shell::new()?;
    xshell::cmd!(sh, "git clone -q {from} {to}").quiet().run()?;
    Ok(Workspace {
        root: to.canonicalize()?,
    })
}

/// A signed release of `images` (all: empty) of `ws` into the local store
/// at `store_dir`: (seconds, report); an error unless every image was
/// accepted.
fn signed_release(
    ws: &Workspace,
    store_dir: &Path,
    signer: &lane_core::signing::Signer,
    images: &[String],
) -> Result<(f64, crate::lane::release::ReleaseReport)> {
    signed_release_with(ws, store_dir, signer, images, None)
}

/// [`signed_release`] reading the shared cache at `cache` too.
fn signed_release_with(
    ws: &Workspace,
    store_dir: &Path,
    signer: &lane_core::signing::Signer,
    images: &[String],
    cache: Option<&str>,
) -> Result<(f64, crate::lane::release::ReleaseReport)> {
    let mut store = crate::adapters::local_store::LocalStore::new(store_dir.to_path_buf());
    let opts = crate::lane::release::ReleaseOptions {
        images: images.to_vec(),
        quiet: true,
        signer: Some(signer.clone()),
        cache: cache.map(str::to_string),
        ..Default::default()
    };
    let t = Instant::now();
    let r = crate::lane::release::release(ws, &opts, &mut store)?;
    let secs = t.elapsed().as_secs_f64();
    if !r.accepted {
        bail!(
            "a release of the generated workspace was rejected: {}",
            crate::lane::release::summary(&r)
        );
    }
    Ok((secs, r))
}

/// `stages: NAME SECONDS s, ...` of a release.
fn stages_note(r: &crate::lane::release::ReleaseReport) -> String {
    format!(
        "stages: {}",
        r.stages
            .iter()
            .map(|(n, s)| format!("{n} {s:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// What a release did that evidence reuse avoids: (layers compressed,
/// blob bytes uploaded, smoke gates run, images whose gates were carried
/// over).
fn release_work(r: &crate::lane::release::ReleaseReport) -> (u64, u64, usize, usize) {
    let gate = |i: &crate::lane::release::ImageRelease, g: lane_core::gates::GateName| {
        i.decision.gates.iter().find(|x| x.gate == g).cloned()
    };
    let mut out = (0, 0, 0, 0);
    for i in &r.images {
        out.0 += i.cache.misses;
        out.1 += gate(i, lane_core::gates::GateName::PublishCrossCheck)
            .and_then(|g| g.evidence["blobs"]["bytes_uploaded"].as_u64())
            .unwrap_or(0);
        match gate(i, lane_core::gates::GateName::Smoke) {
            Some(g) if g.reused.is_some() => out.3 += 1,
            _ => out.2 += 1,
        }
    }
    out
}

/// Evidence reuse on the generated workspace (issue 25), signed releases
/// into a local store outside the checkout (the target store): a commit
/// that changes only README.md, then one changed image, against the first
/// release; that one image released alone from a fresh checkout; and a
/// fresh runner (new clone, empty `target/`, the store warm) with no
/// change, against a cold build.
fn release_reuse(checkout: &Path, work: &Path, runs: usize, images: usize) -> Result<Vec<Case>> {
    let root = work.join("scale-reuse");
    let store_dir = work.join("scale-reuse-store");
    let registry_dir = work.join("scale-reuse-registry");
    if registry_dir.exists() {
        fs::remove_dir_all(&registry_dir)?;
    }
    let registry = RegistryServer::start(&registry_dir, None)?;
    let key = lane_core::signing::generate()?;
    let signer = lane_core::signing::Signer::from_pem(&key.private_pem, "the bench's key")?;
    let changed = if images > SCALE_BASES {
        format!("app-{:02}", images - 1)
    } else {
        "base-00".to_string()
    };
    let (mut first, mut readme, mut one, mut alone, mut fresh, mut cold) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut readme_note, mut one_note, mut fresh_note) =
        (String::new(), String::new(), String::new());
    let mut readme_stages = String::new();
    for _ in 0..runs {
        for d in [&root, &store_dir] {
            if d.exists() {
                fs::remove_dir_all(d)?;
            }
        }
        runtime_scale_workspace(checkout, &root, images)
            .context("making the generated workspace")?;
        let policy = root.join("ci/release-policy.toml");
        let text = fs::read_to_string(&policy)?;
        if !text.contains("trusted_keys = []") {
            bail!("{}: no empty trusted_keys list to fill", policy.display());
        }
        fs::write(
            &policy,
            text.replacen(
                "trusted_keys = []",
                &format!("trusted_keys = [\"\"\"\n{}\"\"\"]", key.public_pem),
                1,
            ),
        )?;
        let ws = commit_checkout(&root).context("committing the generated workspace")?;
        let (t, _) =
            signed_release(&ws, &store_dir, &signer, &[]).context("the first signed release")?;
        first.push(t);

        fs::write(root.join("README.md"), "# the generated workspace\n")?;
        commit_change(&root, "README only")?;
        let (t, r) = signed_release(&ws, &store_dir, &signer, &[])
            .context("the release after a README-only commit")?;
        readme.push(t);
        let (compressed, uploaded, smoked, carried) = release_work(&r);
        readme_note = format!(
            "README-only commit: {compressed} layers compressed, {uploaded} blob bytes uploaded, {smoked} smoke containers started, {carried} of {} images carried their gates over",
            r.images.len()
        );
        readme_stages = stages_note(&r);

        let file = root.join("images").join(&changed).join("data/f0.txt");
        let mut bytes = fs::read(&file)?;
        bytes.extend_from_slice(b"one changed line\n");
        fs::write(&file, bytes)?;
        commit_change(&root, "one image changed")?;
        let (t, r) = signed_release(&ws, &store_dir, &signer, &[])
            .context("the release after one image changed")?;
        one.push(t);
        let (compressed, _, smoked, carried) = release_work(&r);
        one_note = format!(
            "one image ({changed}) changed: {carried} of {} images carried their gates over, {smoked} ran every gate, {compressed} layers compressed",
            r.images.len()
        );
        // The same image released alone: a fresh checkout, empty target/
        // and store, only that image (and its bases) built and gated.
        let lone = clone_checkout(&root, &work.join("scale-reuse-alone"))?;
        let (t, _) = signed_release(
            &lone,
            &work.join("scale-reuse-alone/target/store"),
            &signer,
            &[changed.clone()],
        )
        .context("the release of the changed image alone")?;
        alone.push(t);

        // An authoritative runner's build fills the registry cache with
        // each image's input key (not timed; a CI release would do it).
        let location = format!("{}/bench/reuse-cache-{}", registry.host(), fresh.len());
        let mut opts = BuildOptions::for_workspace(&ws);
        opts.quiet = true;
        opts.shared_cache = Some(build::SharedCache {
            location: location.clone(),
            writes: true,
        });
        build::build(&ws, &[], &opts).context("filling the registry cache")?;
        // A fresh runner, no change: a new clone with an empty target/,
        // releasing into the warm store, reading the warm registry cache.
        let runner = clone_checkout(&root, &work.join("scale-reuse-fresh"))?;
        let (t, r) = signed_release_with(&runner, &store_dir, &signer, &[], Some(&location))
            .context("the release on a fresh runner")?;
        fresh.push(t);
        let (compressed, uploaded, smoked, carried) = release_work(&r);
        let held = r.images.iter().filter(|i| i.held).count();
        let fetched = r.shared_cache.as_ref().map_or(0, |c| c.hits);
        if held != r.images.len() || compressed != 0 || fetched != 0 {
            bail!(
                "the fresh runner built: {held} of {} images held, {compressed} layers compressed, {fetched} fetched from the registry cache",
                r.images.len()
            );
        }
        fresh_note = format!(
            "fresh runner, no change: {held} of {} images held (the target proved the digest their input key names: nothing built, cargo not run), {compressed} layers compressed, {fetched} layers fetched from the registry cache, {uploaded} blob bytes uploaded, {smoked} smoke containers started, {carried} of {} images carried their gates over",
            r.images.len(),
            r.images.len()
        );
        let fresh_stages = stages_note(&r);
        fresh_note = format!("{fresh_note}; {fresh_stages}");
        // The cold build of the same images on another new clone.
        let other = clone_checkout(&root, &work.join("scale-reuse-cold"))?;
        let mut opts = BuildOptions::for_workspace(&other);
        opts.quiet = true;
        let t = Instant::now();
        build::build(&other, &[], &opts)?;
        cold.push(t.elapsed().as_secs_f64());
    }
    let (first, cold) = (Stat::of(first), Stat::of(cold));
    let case = |name: String, lane: Vec<f64>, tool: &str, reference: &Stat, notes: Vec<String>| {
        let lane = Stat::of(lane);
        Case {
            name,
            unit: "seconds".into(),
            ratio: Some(ratio(&lane, reference)),
            lane,
            reference_tool: tool.into(),
            reference: Some(reference.clone()),
            notes,
        }
    };
    let alone = Stat::of(alone);
    Ok(vec![
        case(
            format!("release after a README-only commit ({images} generated images)"),
            readme,
            "the first release of the same images",
            &first,
            vec![readme_note, readme_stages],
        ),
        case(
            format!("release after one of {images} generated images changed"),
            one,
            "the release of that image alone, from a fresh checkout",
            &alone,
            vec![one_note],
        ),
        case(
            format!("release on a fresh runner, no change ({images} generated images)"),
            fresh,
            "a cold build of the same images",
            &cold,
            vec![fresh_note],
        ),
    ])
}

/// The entries of a layer holding `dir` under `/data`, as the lane would
/// package a `files` source directory.
pub fn tree_entries(dir: &Path) -> Result<Vec<Entry>> {
    let root = ImagePath::parse("/data").map_err(anyhow::Error::msg)?;
    let mut entries = vec![Entry {
        path: root.clone(),
        kind: EntryKind::Dir,
        mode: 0o755,
        owner: Owner::ROOT,
    }];
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e?;
        let rel = e.path().strip_prefix(dir)?.to_string_lossy().into_owned();
        let kind = if e.file_type().is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File {
                source: e.path().to_string_lossy().into_owned(),
                size: e.metadata()?.len(),
            }
        };
        let mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
        entries.push(Entry {
            path: root.join(&rel),
            kind,
            mode,
            owner: Owner::ROOT,
        });
    }
    layer::normalise(entries)
}

/// Encodes `dir` (a tree, or a single file) as one layer into `out`. This is
/// what the hidden `bench-layer` command runs in a child process.
pub fn encode_tree(input: &Path, out: &Path) -> Result<layer::LayerDigests> {
    let entries = if input.is_dir() {
        tree_entries(input)?
    } else {
        let size = fs::metadata(input)?.len();
        layer::normalise(vec![Entry {
            path: ImagePath::parse("/data/big.bin").map_err(anyhow::Error::msg)?,
            kind: EntryKind::File {
                source: input.to_string_lossy().into_owned(),
                size,
            },
            mode: 0o644,
            owner: Owner::ROOT,
        }])?
    };
    let w = BufWriter::with_capacity(1 << 20, fs::File::create(out)?);
    let (d, _) = layer::encode_on(
        &entries,
        1_700_000_000,
        &mut crate::lane::build::FsContents { bytes_read: 0 },
        w,
        crate::lane::build::default_jobs(),
    )?;
    Ok(d)
}

/// Runs a command under GNU time, returning (seconds, peak RSS in KiB of
/// its largest process). GNU time waits for the command with wait4, whose
/// `ru_maxrss` covers the process and every child it waited for; running it
/// from a small process (time itself) keeps our own size out of the figure.
fn measure(program: &Path, args: &[&std::ffi::OsStr], scratch: &Path) -> Result<(f64, u64)> {
    let rss_file = scratch.join("maxrss.txt");
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = fs::read_to_string(&rss_file)?;
    let kb = text
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .parse()
        .with_context(|| format!("unexpected GNU time output {text:?}"))?;
    Ok((secs, kb))
}

const GNU_PIPELINE: &str = r#"set -o pipefail
tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf - -C "$1" . \
  | tee >(sha256sum > "$2.tar.sha256") | gzip -n -6 | tee "$2" | sha256sum > "$2.sha256"
wait"#;

/// The same with pigz on two threads (Debian's pigz), the parallel
/// reference for layer assembly on this machine's cores.
const PIGZ_PIPELINE: &str = r#"set -o pipefail
tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf - -C "$1" . \
  | tee >(sha256sum > "$2.tar.sha256") | pigz -p 2 -n -6 | tee "$2" | sha256sum > "$2.sha256"
wait"#;

fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the xtask executable")
}

fn ratio(lane: &Stat, reference: &Stat) -> f64 {
    lane.median / reference.median
}

/// The groups of cases `--case` selects (every one by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CaseGroup {
    /// Layer assembly against gzip and pigz.
    Layer,
    /// Cold, warm and one-change rebuilds of the workspace.
    Rebuild,
    /// The whole release of the sample service.
    Release,
    /// The first and the unchanged publish against skopeo copy.
    Publish,
    /// The Python import analysis against deptry.
    Imports,
    /// The 50 generated images: parallel, warm, fresh checkout with the registry cache.
    Scale,
    /// The release of the generated images.
    ReleaseScale,
    /// Peak memory of one large layer.
    Memory,
}

pub fn bench(ws: &Workspace, quick: bool, only: &[CaseGroup]) -> Result<BenchReport> {
    let on = |g: CaseGroup| only.is_empty() || only.contains(&g);
    let work = ws.root.join("target/bench");
    fs::create_dir_all(&work)?;
    let runs = if quick { 1 } else { 3 };
    let mut cases = Vec::new();
    if on(CaseGroup::Layer) {
        cases.extend(layer_assembly(&work, runs, quick)?);
    }
    // The groups on the sample workspace run on a copy of it.
    let copy = work.join("ws");
    let on_copy = [
        CaseGroup::Rebuild,
        CaseGroup::Release,
        CaseGroup::Publish,
        CaseGroup::Imports,
    ];
    let root = if on_copy.into_iter().any(on) {
        copy_workspace(&ws.root, &copy)?;
        copy.canonicalize()?
    } else {
        copy.clone()
    };
    let cws = Workspace { root };
    let mut opts = BuildOptions::for_workspace(&cws);
    opts.quiet = true;
    if on(CaseGroup::Rebuild) {
        cases.extend(rebuilds(&cws, &copy, &opts, runs)?);
    }
    if on(CaseGroup::Release) {
        cases.extend(whole_release(&cws, &copy, &opts, runs)?);
    }
    if on(CaseGroup::Publish) {
        // A publish takes a tenth of a second: three times the runs, the
        // lane's and skopeo's interleaved, for a steadier median.
        cases.extend(publish_vs_skopeo(&cws, &work, &opts, 3 * runs)?);
    }
    if on(CaseGroup::Imports) {
        cases.extend(python_imports(&cws, &work, &opts, runs)?);
    }
    if on(CaseGroup::Scale) {
        cases.extend(scale(&work, runs)?);
    }
    if on(CaseGroup::ReleaseScale) {
        // --quick releases 6 of the generated images (5 bases, one image).
        let images = if quick { SCALE_BASES + 1 } else { 50 };
        cases.extend(release_scale(&ws.root, &work, runs, images)?);
        cases.extend(release_reuse(&ws.root, &work, runs, images)?);
    }
    if on(CaseGroup::Memory) {
        cases.extend(peak_memory(&work, runs, quick)?);
    }
    Ok(BenchReport {
        quick,
        machine: machine(),
        cases,
    })
}

/// The lane's layer encoder on `input`, in a child process: (seconds, peak KiB).
fn lane_layer(input: &Path, out: &Path, work: &Path) -> Result<(f64, u64)> {
    measure(
        &self_exe()?,
        &["bench-layer".as_ref(), input.as_ref(), out.as_ref()],
        work,
    )
}

/// The reference pipeline on the directory `input`: (seconds, peak KiB).
fn gnu_layer(input: &Path, out: &Path, work: &Path) -> Result<(f64, u64)> {
    pipeline_layer(GNU_PIPELINE, input, out, work)
}

/// A reference shell pipeline over `input` into `out`: (seconds, peak KiB).
fn pipeline_layer(pipeline: &str, input: &Path, out: &Path, work: &Path) -> Result<(f64, u64)> {
    measure(
        Path::new("bash"),
        &[
            "-c".as_ref(),
            pipeline.as_ref(),
            "gnu".as_ref(),
            input.as_ref(),
            out.as_ref(),
        ],
        work,
    )
}

/// Case 1: layer assembly of the generated tree vs the GNU pipeline.
fn layer_assembly(work: &Path, runs: usize, quick: bool) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let tree = work.join("tree");
    let total = generate_tree(&tree, if quick { 1 } else { 10 })?;
    let mb = total as f64 / 1e6;
    let (mut lane_t, mut gnu_t, mut pigz_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lane_size, mut gnu_size) = (0, 0);
    for _ in 0..runs {
        let out = work.join("lane.tar.gz");
        let (s, _) = lane_layer(&tree, &out, work)?;
        lane_t.push(mb / s);
        lane_size = fs::metadata(&out)?.len();
        let out = work.join("gnu.tar.gz");
        let (s, _) = gnu_layer(&tree, &out, work)?;
        gnu_t.push(mb / s);
        gnu_size = fs::metadata(&out)?.len();
        let out = work.join("pigz.tar.gz");
        let (s, _) = pipeline_layer(PIGZ_PIPELINE, &tree, &out, work)?;
        pigz_t.push(mb / s);
    }
    let lane_stat = Stat::of(lane_t);
    let pigz = Stat::of(pigz_t);
    out.push(Case {
        name: format!("layer assembly against parallel gzip, {mb:.0} MB tree"),
        unit: "MB/s (higher is better)".into(),
        ratio: Some(ratio(&lane_stat, &pigz)),
        lane: lane_stat.clone(),
        reference_tool: "tar --sort=name | pigz -p 2 -n -6 | sha256sum (+ tar sha256)".into(),
        reference: Some(pigz),
        notes: vec![format!(
            "a layer of {} MiB and more is compressed in 1 MiB blocks on every core (pigz's format; the same bytes for any number of cores); smaller layers are one stream, and independent images build at once (build --jobs)",
            layer::BLOCKS_FROM >> 20
        )],
    });
    let (lane, reference) = (lane_stat, Stat::of(gnu_t));
    out.push(Case {
        name: format!("layer assembly, {mb:.0} MB tree (tar+gzip+both digests)"),
        unit: "MB/s (higher is better)".into(),
        ratio: Some(ratio(&lane, &reference)),
        lane,
        reference_tool: "tar --sort=name | gzip -n -6 | sha256sum (+ tar sha256)".into(),
        reference: Some(reference),
        notes: vec![format!(
            "compressed size: lane {lane_size} B, gzip {gnu_size} B ({:+.2}%)",
            (lane_size as f64 / gnu_size as f64 - 1.0) * 100.0
        )],
    });
    Ok(out)
}

/// Case 2: cold build, warm rebuild, rebuild after one changed file.
fn rebuilds(cws: &Workspace, copy: &Path, opts: &BuildOptions, runs: usize) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let (mut cold, mut warm, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut scan, mut scan_note) = (Vec::new(), String::new());
    let mut notes = Vec::new();
    let specs = cws.load_images()?;
    for run in 0..runs {
        let _ = fs::remove_dir_all(copy.join("target"));
        let t = Instant::now();
        build::build(&cws, &[], &opts)?;
        cold.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let w = build::build(&cws, &[], &opts)?.images;
        warm.push(t.elapsed().as_secs_f64());
        // The no-secrets gate over every image, as a release runs it.
        let t = Instant::now();
        let (mut files, mut bytes) = (0, 0);
        for i in &w {
            let spec = specs
                .iter()
                .find(|s| s.name == i.name)
                .context("a built image without its spec")?;
            let g = crate::lane::no_secrets::gate(spec, i, &[]);
            if g.state != lane_core::gates::GateState::Passed {
                bail!("the no-secrets gate failed on {}: {}", i.name, g.summary);
            }
            files += g.evidence["files_scanned"].as_u64().unwrap_or(0);
            bytes += g.evidence["bytes_scanned"].as_u64().unwrap_or(0);
        }
        scan.push(t.elapsed().as_secs_f64());
        scan_note = format!(
            "{} images, {files} files, {bytes} bytes read once (every layer decompressed and scanned)",
            w.len()
        );
        let conf = copy.join("images/hello/rootfs/etc/hello/hello.conf");
        fs::write(&conf, format!("greeting=bench run {run}\n"))?;
        let t = Instant::now();
        let c = build::build(&cws, &[], &opts)?.images;
        changed.push(t.elapsed().as_secs_f64());
        if run == 0 {
            let note = |what: &str, r: &[BuiltImage]| {
                let sum = |f: fn(&CacheStats) -> u64| r.iter().map(|i| f(&i.cache)).sum::<u64>();
                format!(
                    "{what}: {} layer hits, {} misses, {} bytes read, {} bytes compressed",
                    sum(|c| c.hits),
                    sum(|c| c.misses),
                    sum(|c| c.bytes_read),
                    sum(|c| c.bytes_compressed)
                )
            };
            notes.push(note("warm rebuild", &w));
            notes.push(note("one file changed", &c));
        }
    }
    let cold = Stat::of(cold);
    for (name, v, n) in [
        ("warm rebuild, no change", warm, notes[0].clone()),
        ("rebuild after one changed file", changed, notes[1].clone()),
        ("the no-secrets gate's scan", scan, scan_note),
    ] {
        let s = Stat::of(v);
        out.push(Case {
            name: format!("{name} (all workspace images)"),
            unit: "seconds".into(),
            ratio: Some(ratio(&s, &cold)),
            lane: s,
            reference_tool: "the lane's own cold build (fresh cache and cargo target dir)".into(),
            reference: Some(cold.clone()),
            notes: vec![n],
        });
    }
    Ok(out)
}

/// Case 3: the whole release lane on the sample service, by stage.
fn whole_release(
    cws: &Workspace,
    copy: &Path,
    opts: &BuildOptions,
    runs: usize,
) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let sh = xshell::Shell::new()?;
    sh.change_dir(&copy);
    xshell::cmd!(sh, "git checkout -q -- .").quiet().run()?;
    let (mut total, mut bare) = (Vec::new(), Vec::new());
    let mut stage_notes = Vec::new();
    for _ in 0..runs {
        let _ = fs::remove_dir_all(copy.join("target"));
        let t = Instant::now();
        build::build(&cws, &["hello".to_string()], &opts)?;
        bare.push(t.elapsed().as_secs_f64());
        let _ = fs::remove_dir_all(copy.join("target"));
        let mut store = crate::adapters::local_store::LocalStore::new(
            copy.join(crate::lane::publish::LOCAL_STORE),
        );
        let ropts = crate::lane::release::ReleaseOptions {
            images: vec!["hello".into()],
            quiet: true,
            ..Default::default()
        };
        let t = Instant::now();
        let r = crate::lane::release::release(&cws, &ropts, &mut store)?;
        total.push(t.elapsed().as_secs_f64());
        stage_notes = r
            .stages
            .iter()
            .map(|(n, s)| format!("{n} {s:.2} s"))
            .collect();
    }
    let (lane, reference) = (Stat::of(total), Stat::of(bare));
    out.push(Case {
        name: "whole release lane, sample service (local store)".into(),
        unit: "seconds".into(),
        ratio: Some(ratio(&lane, &reference)),
        lane,
        reference_tool: "a bare cold build of the same image".into(),
        reference: Some(reference),
        notes: vec![format!("stages: {}", stage_notes.join(", "))],
    });
    Ok(out)
}

/// Case 4: publishing to a real registry vs skopeo copy of the same layout.
fn publish_vs_skopeo(
    cws: &Workspace,
    work: &Path,
    opts: &BuildOptions,
    runs: usize,
) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let built = build::build(cws, &["hello".to_string()], opts)?;
    let hello = built
        .images
        .iter()
        .find(|i| i.name == "hello")
        .context("hello was not built")?;
    let image = crate::adapters::layout::Layout::at(&hello.name, &hello.layout).image()?;
    let tags = ["v1".parse()?];
    let (mut first, mut again, mut sk) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first_bytes, mut again_bytes, mut sk_bytes) = (0, 0, 0);
    for run in 0..runs {
        // A registry of its own each run: skopeo remembers where it has
        // seen a blob (its blob info cache, by registry host and port) and
        // would mount it from an earlier run's repository instead of
        // uploading it; on a new port both make a true first publish.
        let dir = work.join("registry");
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let registry = RegistryServer::start_logging_requests(&dir)?;
        // The product path: the registry store, publish by digest with the
        // cross-check, then the tag read back; a fresh repository each run.
        let target = format!("{}/bench/lane-{run}", registry.host())
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let mut store = crate::adapters::registry_store::RegistryStore::new(target, true);
        store.preflight(std::slice::from_ref(&hello.repository))?;
        let t = Instant::now();
        let r = crate::lane::publish::publish_image(&mut store, hello, &tags)?;
        first.push(t.elapsed().as_secs_f64());
        first_bytes = r.blobs.bytes_uploaded;
        let t = Instant::now();
        let r = crate::lane::publish::publish_image(&mut store, hello, &tags)?;
        again.push(t.elapsed().as_secs_f64());
        again_bytes = r.blobs.bytes_uploaded;
        let dest = format!("docker://{}/bench/skopeo-{run}:v1", registry.host());
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", hello.layout.display()))
            .arg(&dest)
            .output()
            .context("running skopeo copy")?;
        sk.push(t.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        sk_bytes = image.blobs.iter().map(|b| b.size).sum::<u64>();
        // The reference must be a first publish: by the registry's access
        // log, skopeo uploaded every blob and mounted none.
        let (uploads, mounts) = skopeo_uploads(&registry.log()?);
        if uploads != image.blobs.len() || mounts != 0 {
            bail!(
                "skopeo copy was not a first publish: the registry logged {uploads} blob uploads and {mounts} mounts from it for {} blobs",
                image.blobs.len()
            );
        }
    }
    let skopeo = Stat::of(sk);
    for (name, v, bytes) in [
        ("publish to a fresh repository", first, first_bytes),
        ("publish again, unchanged", again, again_bytes),
    ] {
        let lane = Stat::of(v);
        out.push(Case {
            name: format!("{name} (sample service, {} blobs)", image.blobs.len()),
            unit: "seconds".into(),
            ratio: Some(ratio(&lane, &skopeo)),
            lane,
            reference_tool: "skopeo copy oci:LAYOUT docker://... to a fresh repository".into(),
            reference: Some(skopeo.clone()),
            notes: vec![format!(
                "blob bytes uploaded: lane {bytes}, skopeo {sk_bytes} (every blob uploaded, none mounted, by the registry's access log)"
            )],
        });
    }
    Ok(out)
}

/// Blob uploads and cross-repository mounts skopeo made on a registry, by
/// its access log (combined log format: `"METHOD URI PROTO" STATUS SIZE
/// "REFERER" "USER-AGENT"`): a `PATCH` to an upload session is an upload,
/// a `POST ...?mount=` answered 201 a mount (a mount the registry refuses
/// is answered 202, and skopeo uploads the blob instead).
fn skopeo_uploads(log: &str) -> (usize, usize) {
    let (mut uploads, mut mounts) = (0, 0);
    for l in log.lines().filter(|l| l.contains("\"skopeo/")) {
        let Some((request, after)) = l.split_once('"').and_then(|(_, r)| r.split_once('"')) else {
            continue;
        };
        let status = after.split_whitespace().next().unwrap_or("");
        if request.starts_with("PATCH /v2/") && request.contains("/blobs/uploads/") {
            uploads += 1;
        } else if request.starts_with("POST /v2/") && request.contains("mount=") && status == "201"
        {
            mounts += 1;
        }
    }
    (uploads, mounts)
}

/// Case 5: peak memory while encoding one large layer.
fn peak_memory(work: &Path, runs: usize, quick: bool) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let big = work.join("big.bin");
    let big_size: u64 = if quick { 64 << 20 } else { 1 << 30 };
    {
        let mut f = BufWriter::with_capacity(1 << 20, fs::File::create(&big)?);
        write_content(&mut f, &mut Rng(7), big_size, 20)?;
        f.flush()?;
    }
    let (mut lane_m, mut gnu_m) = (Vec::new(), Vec::new());
    let single = work.join("single");
    fs::create_dir_all(&single)?;
    let linked = single.join("big.bin");
    let _ = fs::remove_file(&linked);
    fs::hard_link(&big, &linked).or_else(|_| fs::copy(&big, &linked).map(|_| ()))?;
    for _ in 0..runs {
        let out = work.join("big.tar.gz");
        let (_, kb) = lane_layer(&big, &out, work)?;
        lane_m.push(kb as f64 / 1024.0);
        let out = work.join("big-gnu.tar.gz");
        let (_, kb) = gnu_layer(&single, &out, work)?;
        gnu_m.push(kb as f64 / 1024.0);
    }
    let (lane, reference) = (Stat::of(lane_m), Stat::of(gnu_m));
    out.push(Case {
        name: format!("peak memory, one {} MiB layer", big_size >> 20),
        unit: "MiB RSS (lower is better)".into(),
        ratio: Some(ratio(&lane, &reference)),
        lane,
        reference_tool: "the GNU pipeline's largest process".into(),
        reference: Some(reference),
        notes: vec!["the lane streams: memory must not grow with the layer size".into()],
    });
    let _ = fs::remove_file(&big);
    let _ = fs::remove_dir_all(&single);
    Ok(out)
}

/// Cores and CPU model, for the report.
fn machine() -> String {
    format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    )
}

fn copy_workspace(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    for rel in crate::adapters::workspace::source_files(from)? {
        let src = from.join(&rel);
        if src.is_file() {
            let dst = to.join(&rel);
            fs::create_dir_all(dst.parent().unwrap_or(to))?;
            fs::copy(&src, &dst)?;
        }
    }
    // The copy needs git facts: give it its own commit.
    let sh = xshell::Shell::new()?;
    sh.change_dir(to);
    xshell::cmd!(sh, "git init -q").quiet().run()?;
    xshell::cmd!(sh, "git add -A").quiet().run()?;
    xshell::cmd!(
        sh,
        "git -c user.name=bench -c user.email=bench@example.com commit -q -m bench"
    )
    .quiet()
    .run()?;
    Ok(())
}

/// The results as a table.
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "machine: {}{}\n\n",
        r.machine,
        if r.quick { " (--quick)" } else { "" }
    );
    out.push_str("| case | unit | lane (min/median/max) | reference (min/median/max) | ratio |\n|---|---|---|---|---|\n");
    let s = |s: &Stat| format!("{:.2} / {:.2} / {:.2}", s.min, s.median, s.max);
    for c in &r.cases {
        out.push_str(&format!(
            "| {} | {} | {} | {}: {} | {} |\n",
            c.name,
            c.unit,
            s(&c.lane),
            c.reference_tool.replace('|', "\\|"),
            c.reference.as_ref().map(s).unwrap_or_else(|| "-".into()),
            c.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    for c in &r.cases {
        for n in &c.notes {
            out.push_str(&format!("- {}: {n}\n", c.name));
        }
    }
    out
}

/// Measure the lane side by side with reference tools (see BENCHMARKS.md).
///
/// Generates its own inputs under target/bench/ (about 200 MB; 20 MB with
/// --quick) and reports, per case, the lane's figure, the reference's and
/// their ratio (min/median/max over 3 runs, 9 interleaved for the publish
/// cases and the import analysis; 1 and 3 with --quick). Needs the
/// Distribution registry, skopeo, pigz, GNU time and the Docker Engine
/// (ci/setup.sh installs them). A full run takes about 10 minutes on 2 cores.
///
/// Example: cargo xtask bench --case publish --case scale
#[derive(clap::Args)]
pub struct Args {
    /// Small inputs and one run: a smoke check of the harness.
    #[arg(long)]
    pub quick: bool,
    /// Only these groups of cases (repeat the flag for more; all by default).
    #[arg(long = "case", value_enum, value_name = "GROUP")]
    pub cases: Vec<CaseGroup>,
    /// Print the report as JSON: {quick, machine, cases: [{name, unit, lane:
    /// {min, median, max}, reference_tool, reference, ratio, notes}]}.
    #[arg(long)]
    pub json: bool,
}

/// Encode one layer from a directory or file (used by `bench` in a child process).
#[derive(clap::Args)]
#[command(hide = true)]
pub struct LayerArgs {
    pub input: PathBuf,
    pub out: PathBuf,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args { quick, cases, json } = args;
    let report = bench(ws, quick, &cases)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Python import analysis of a source tree inside pyhello's layout (used by `bench`).
#[derive(clap::Args)]
#[command(hide = true)]
pub struct ImportsArgs {
    pub layout: PathBuf,
    pub app: PathBuf,
}

/// `bench-imports`: the lane's import analysis in a child process of `bench`.
pub fn run_imports(ws: &Workspace, args: ImportsArgs) -> Result<ExitCode> {
    let v = import_analysis(ws, &args.layout, &args.app)?;
    println!("{v}");
    Ok(ExitCode::SUCCESS)
}

/// `bench-layer`: the lane's layer encoder in a child process of `bench`.
pub fn run_layer(args: LayerArgs) -> Result<ExitCode> {
    let d = encode_tree(&args.input, &args.out)?;
    println!("{}", serde_json::to_string(&d)?);
    Ok(ExitCode::SUCCESS)
}

/// The deptry version the import-analysis case compares with (PyPI).
const DEPTRY: &str = "deptry==0.25.1";

/// A venv with deptry and the requirements of pyhello (deptry maps import
/// names to distributions through the installed metadata).
fn deptry_venv(work: &Path, requirements: &[String]) -> Result<PathBuf> {
    let venv = work.join("deptry-venv");
    let deptry = venv.join("bin/deptry");
    if !deptry.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("python3 -m venv (Debian package python3-venv)")?
            .success();
        if !ok {
            bail!("python3 -m venv {} failed", venv.display());
        }
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", DEPTRY])
            .args(requirements)
            .output()
            .context("installing deptry from PyPI into the bench venv")?;
        if !out.status.success() {
            bail!(
                "pip install {DEPTRY} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(deptry)
}

/// The corpus: every `.py` file of the image's standard library (not its
/// tests), copied as an application tree under `dir/app`, from base-python's
/// layers. Returns (files, bytes).
fn python_corpus(layout: &Path, dir: &Path) -> Result<(u64, u64)> {
    let app = dir.join("app");
    let _ = fs::remove_dir_all(&app);
    let l = crate::adapters::layout::Layout::at("base-python", layout);
    let (_, manifest) = l.manifest()?;
    let (mut files, mut bytes) = (0, 0);
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let digest: lane_core::id::Digest = layer["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("a layer digest of base-python")?;
        let f = fs::File::open(l.blob_path(&digest))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        for e in tar.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            let Some(rel) = path.strip_prefix("usr/lib/python3.11/") else {
                continue;
            };
            if !rel.ends_with(".py")
                || rel.contains("/test/")
                || rel.contains("/tests/")
                || rel.starts_with("test/")
                || e.header().entry_type() != tar::EntryType::Regular
            {
                continue;
            }
            let to = app.join(rel);
            fs::create_dir_all(to.parent().unwrap_or(&app))?;
            let mut out = fs::File::create(&to)?;
            bytes += io::copy(&mut e, &mut out)?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// `xtask bench-imports LAYOUT APP` (in a child process): reads the
/// image's merged file system like drift does, puts the corpus at /app,
/// parses and resolves every import. Prints the counts and the analysis time.
pub fn import_analysis(ws: &Workspace, layout: &Path, app: &Path) -> Result<serde_json::Value> {
    let all = ws.load_images()?;
    let spec = all
        .iter()
        .find(|s| s.name == "pyhello")
        .context("no image pyhello")?;
    let (mut image_fs, runtime) =
        crate::adapters::layout::Layout::at("pyhello", layout).file_system()?;
    let start = Instant::now();
    for item in walkdir::WalkDir::new(app).sort_by_file_name() {
        let item = item?;
        if !item.file_type().is_file() {
            continue;
        }
        let rel = item
            .path()
            .strip_prefix(app)?
            .to_string_lossy()
            .into_owned();
        image_fs.insert(
            &format!("/app/{rel}"),
            lane_core::drift::Node::File {
                data: Some(fs::read(item.path())?),
            },
        );
    }
    let manifest = lane_core::drift::CuratedManifest::from_image(&image_fs);
    let mut facts = crate::lane::drift::python_facts(ws, &all, spec, &runtime)?
        .context("pyhello has no [python] table")?;
    facts.app_source = "corpus".into();
    let py = lane_core::python::resolve::analyse(&image_fs, &manifest, &facts, &|_| Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(serde_json::json!({
        "files": py.files.len(),
        "imports": py.imports.len(),
        "unresolved": py.unresolved.len(),
        "unresolved_modules": py
            .unresolved
            .iter()
            .map(|u| u.site.module.clone())
            .collect::<std::collections::BTreeSet<_>>(),
        "analysis_seconds": start.elapsed().as_secs_f64(),
    }))
}

/// Case: the Python import analysis against deptry on the same sources
/// (the image's standard library as an application tree) and the same
/// requirement list.
fn python_imports(
    cws: &Workspace,
    work: &Path,
    opts: &BuildOptions,
    runs: usize,
) -> Result<Vec<Case>> {
    let built = build::build(cws, &["pyhello".to_string()], opts)?.images;
    let layout = |name: &str| -> Result<PathBuf> {
        built
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.layout.clone())
            .with_context(|| format!("the build did not produce {name}"))
    };
    let dir = work.join("python-corpus");
    fs::create_dir_all(&dir)?;
    let (files, bytes) = python_corpus(&layout("base-python")?, &dir)?;
    let wheels = crate::adapters::pip::locked_wheels(
        &cws.root,
        &cws.load_images()?
            .into_iter()
            .find(|s| s.name == "pyhello")
            .context("no image pyhello")?,
    )?;
    let requirements: Vec<String> = wheels
        .iter()
        .map(|w| format!("{}=={}", w.name, w.version))
        .collect();
    fs::write(dir.join("requirements.txt"), requirements.join("\n") + "\n")?;
    let deptry = deptry_venv(work, &requirements)?;
    let script =
        r#""$1" app --requirements-files requirements.txt --no-ansi > deptry.out 2>&1; exit 0"#;
    let (mut lane, mut reference, mut analysis) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = serde_json::Value::Null;
    // Each run takes well under a second: more runs, interleaved, steady
    // the medians against other load on the machine.
    for _ in 0..runs * 3 {
        let (secs, _) = measure(
            &self_exe()?,
            &[
                "--workspace".as_ref(),
                cws.root.as_os_str(),
                "bench-imports".as_ref(),
                layout("pyhello")?.as_os_str(),
                dir.join("app").as_os_str(),
            ],
            work,
        )?;
        lane.push(secs);
        let out = Command::new(self_exe()?)
            .arg("--workspace")
            .arg(&cws.root)
            .arg("bench-imports")
            .arg(layout("pyhello")?)
            .arg(dir.join("app"))
            .output()?;
        counts = serde_json::from_slice(&out.stdout).unwrap_or_default();
        analysis.push(counts["analysis_seconds"].as_f64().unwrap_or(0.0));
        let start = Instant::now();
        let st = Command::new("bash")
            .args(["-c", script, "deptry"])
            .arg(&deptry)
            .current_dir(&dir)
            .status()
            .context("running deptry")?;
        if !st.success() {
            bail!("deptry did not run");
        }
        reference.push(start.elapsed().as_secs_f64());
    }
    let deptry_out = fs::read_to_string(dir.join("deptry.out")).unwrap_or_default();
    let issues = deptry_out
        .lines()
        .find(|l| l.contains("Found") || l.contains("No dependency issues"))
        .unwrap_or("")
        .trim()
        .to_string();
    let lane = Stat::of(lane);
    let reference = Stat::of(reference);
    let analysis = Stat::of(analysis);
    Ok(vec![Case {
        name: format!("Python import analysis, {files} files ({bytes} bytes)"),
        unit: "seconds".into(),
        ratio: Some(ratio(&lane, &reference)),
        lane,
        reference_tool: format!("{DEPTRY} on the same sources and requirement list"),
        reference: Some(reference),
        notes: vec![
            format!(
                "lane: parse + resolve inside the image {:.3} s median of the run, the rest is reading the image's layers; {} imports, {} unresolved",
                analysis.median, counts["imports"], counts["unresolved"]
            ),
            format!("deptry: {issues}"),
        ],
    }])
}

#[cfg(test)]
mod tests {
    use super::skopeo_uploads;

    #[test]
    fn skopeo_uploads_and_mounts_are_counted_from_the_access_log() {
        let log = r#"127.0.0.1 - - [29/Nov/2026:10:33:11 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skopeo/1.9.3"
127.0.0.1 - - [29/Nov/2026:10:33:11 +0000] "PATCH /v2/bench/skopeo-1/blobs/uploads/d795?_state=x HTTP/1.1" 202 0 "" "skopeo/1.9.3"
127.0.0.1 - - [29/Nov/2026:10:33:11 +0000] "POST /v2/bench/skopeo-1/blobs/uploads/?mount=sha256%3Aab&from=bench%2Fskopeo-0 HTTP/1.1" 201 0 "" "skopeo/1.9.3"
127.0.0.1 - - [29/Nov/2026:10:33:11 +0000] "POST /v2/bench/skopeo-1/blobs/uploads/?mount=sha256%3Acd&from=bench%2Fskopeo-0 HTTP/1.1" 202 0 "" "skopeo/1.9.3"
127.0.0.1 - - [29/Nov/2026:10:33:11 +0000] "PATCH /v2/bench/lane-1/blobs/uploads/e1?_state=y HTTP/1.1" 202 0 "" "release-lane-xtask/0.1.0"
time="2026-11-29T10:33:11Z" level=error msg="response completed with error" err.code="blob unknown"
"#;
        assert_eq!(skopeo_uploads(log), (1, 1));
        assert_eq!(skopeo_uploads(""), (0, 0));
    }
}
