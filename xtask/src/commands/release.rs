//! `cargo xtask release`: the lane. Preflight, build, gates, publish the
//! candidate by digest, cross-check, provenance, then accept (move the tags)
//! or reject (move nothing). Evidence is attached to the candidate digest in
//! both cases, so a rejection is auditable too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use crate::adapters::workspace::{GitFacts, Workspace};
use crate::commands::build::{self, BuildOptions};
use crate::report::Reporter;
use lane_core::distribution::BuiltImage;
use lane_core::evidence::{self, ANNOTATION_PREDICATE, MEDIA_DSSE, MEDIA_RELEASE_RECORD};
use lane_core::gates::POLICY_PATH;
use lane_core::gates::{self, Decision, GateResult, Policy};
use lane_core::layer::sha256;
use lane_core::oci::{Blob, canonical_json};
use lane_core::provenance::{self, Builder, Dependency, ProvenanceInputs};
use lane_core::store::Store;

#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    pub images: Vec<String>,
    pub quiet: bool,
    /// Signs the provenance and gate statements; `None` leaves them
    /// unsigned (and `cargo xtask verify` then refuses them).
    pub signer: Option<lane_core::signing::Signer>,
}

/// The outcome for one image, as `release --json` prints it and as the
/// release record stores it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRelease {
    pub image: String,
    pub repository: String,
    pub subject: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub accepted: bool,
    pub decision: Decision,
    /// Tags moved (empty on rejection).
    pub tagged: Vec<String>,
    /// Digests of the attached evidence artifacts.
    pub evidence: Vec<String>,
    pub record: PathBuf,
    pub provenance: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub store: String,
    pub builder: Builder,
    /// Keyid of the key that signed the evidence; null when unsigned.
    pub signing_key: Option<String>,
    /// Whether the policy's `[signing] trusted_keys` holds that key (if not,
    /// `cargo xtask verify` will refuse this evidence).
    pub signing_key_trusted: bool,
    pub accepted: bool,
    pub images: Vec<ImageRelease>,
    /// Wall-clock seconds of each stage, in order.
    pub stages: Vec<(String, f64)>,
}

/// Accumulates the time spent in each stage.
struct Stages {
    mark: std::time::Instant,
    spent: Vec<(String, f64)>,
}

impl Stages {
    fn new() -> Stages {
        Stages {
            mark: std::time::Instant::now(),
            spent: Vec::new(),
        }
    }

    /// Charges the time since the last mark to `name`.
    fn end(&mut self, name: &str) {
        let secs = self.mark.elapsed().as_secs_f64();
        self.mark = std::time::Instant::now();
        match self.spent.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += secs,
            None => self.spent.push((name.to_string(), secs)),
        }
    }
}

/// The facts every gate and the provenance share.
struct Context_ {
    git: GitFacts,
    policy: Policy,
    policy_digest: String,
    builder: Builder,
    started_on: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn load_policy(ws: &Workspace) -> Result<(Policy, String)> {
    let path = ws.root.join(POLICY_PATH);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("reading {POLICY_PATH}; every release needs a policy file (see README.md)")
    })?;
    let text =
        String::from_utf8(bytes.clone()).with_context(|| format!("{POLICY_PATH} is not UTF-8"))?;
    Ok((
        gates::parse_policy(POLICY_PATH, &text)?,
        sha256(&bytes).to_string(),
    ))
}

/// Runs the lane. Returns the report; the caller exits 0 only when every
/// image was accepted.
pub fn release(
    ws: &Workspace,
    opts: &ReleaseOptions,
    store: &mut dyn Store,
) -> Result<ReleaseReport> {
    let progress = Reporter { quiet: opts.quiet };
    let started_on = now();
    let mut stages = Stages::new();
    let (policy, policy_digest) = load_policy(ws)?;
    let builder = Builder::from_env(&|k| std::env::var(k).ok());

    // Preflight: before any build work.
    let all = ws.load_images()?;
    let selected = crate::adapters::workspace::select(&all, &opts.images)?;
    let repositories: Vec<String> = selected
        .iter()
        .filter(|i| opts.images.is_empty() || opts.images.contains(&i.name))
        .map(|i| i.repository.clone())
        .collect();
    progress.say(format_args!("preflight: {}", store.describe()));
    store.preflight(&repositories)?;
    // The engine is checked now too. Without it the smoke gate fails, but the
    // lane goes on to build and publish the candidate, so that the rejection
    // is recorded and attached to the candidate digest.
    let engine = crate::adapters::engine::probe();
    match &engine {
        Ok(facts) => progress.say(format_args!(
            "preflight: Docker Engine {} at {}",
            facts.version, facts.address
        )),
        Err(e) => progress.error(format_args!(
            "preflight: {e:#}\n       the smoke gate will fail and the release will be rejected"
        )),
    }

    stages.end("preflight");
    let git = crate::adapters::workspace::git_facts(&ws.root)?;
    let ctx = Context_ {
        git,
        policy,
        policy_digest,
        builder,
        started_on,
    };

    progress.say("build");
    let mut build_opts = BuildOptions::for_workspace(ws);
    build_opts.quiet = opts.quiet;
    let report = build::build(ws, &opts.images, &build_opts)?;
    stages.end("build");

    progress.say("gates: reproducible (second build from a copy)");
    let repro = crate::commands::repro::repro(ws, &opts.images, true);
    stages.end("gate: reproducible");
    progress.say("gates: lockfiles fresh (lock --check)");
    let stale = lock_freshness(ws, &all)?;
    stages.end("gate: pinned inputs");

    let mut images = Vec::new();
    // Named images are released; their workspace bases are built (their
    // layers are part of the image) but not released on their own.
    let released = report
        .images
        .iter()
        .filter(|i| opts.images.is_empty() || opts.images.contains(&i.name));
    for image in released {
        let spec = selected
            .iter()
            .find(|s| s.name == image.name)
            .context("built image not selected")?;
        let mut results = Vec::new();
        results.push(source_state(&ctx.git));
        results.push(pinned_inputs(ws, spec, &stale)?);
        results.push(reproducible(&repro, &image.name));
        results.extend(image_gates(
            ws,
            spec,
            image,
            engine.as_ref().err(),
            &progress,
        ));
        stages.end("gates: image checks");

        progress.say(format_args!(
            "publish {} by digest to {}",
            image.name,
            store.describe()
        ));
        let cross = store.publish_candidate(image);
        let published = cross.is_ok();
        results.push(match &cross {
            Ok(c) => GateResult::check(
                "publish-cross-check",
                c.ok,
                if c.ok {
                    "the store holds exactly the built digest".to_string()
                } else {
                    c.failures.join("; ")
                },
                serde_json::to_value(c)?,
            ),
            Err(e) => GateResult::failed("publish-cross-check", format!("{e:#}"), Value::Null),
        });

        stages.end("publish and cross-check");
        let subject = store.subject_name(&spec.repository);
        let statement =
            provenance::provenance_statement(&provenance_inputs(ws, &ctx, image, &subject)?);
        let missing = provenance::missing_fields(&statement);
        results.push(GateResult::check(
            "provenance-complete",
            missing.is_empty(),
            if missing.is_empty() {
                "every field present".to_string()
            } else {
                format!("missing: {}", missing.join(", "))
            },
            json!({ "missing": missing }),
        ));
        let trusted = ctx.policy.trusted_builders.is_empty()
            || ctx.policy.trusted_builders.contains(&ctx.builder.id);
        results.push(GateResult::check(
            "authoritative-builder",
            ctx.builder.authoritative && trusted,
            format!(
                "builder {} ({})",
                ctx.builder.id,
                if !ctx.builder.authoritative {
                    "a local run, not a CI workflow: release to a registry from CI, or omit --registry to release into the local store"
                } else if trusted {
                    "a trusted CI workflow"
                } else {
                    "a CI workflow the policy does not trust: add its id to [builder] trusted in ci/release-policy.toml"
                }
            ),
            serde_json::to_value(&ctx.builder)?,
        ));

        let required = ctx.policy.required(store.is_registry());
        let decision = gates::decide(&required, &results);
        let policy_dep = Dependency::named(POLICY_PATH, "sha256", &ctx.policy_digest);
        let gate_statement = provenance::gate_statement(
            &subject,
            image.manifest_digest.as_str(),
            &decision,
            &policy_dep,
        );

        // One record per run: a later run of the same digest (another
        // store, a rejection) never overwrites an earlier record.
        let record_path = ws.root.join("target/releases").join(format!(
            "{}-{}-{}-{}.json",
            image.name,
            image.manifest_digest.short(),
            if store.is_registry() {
                "registry"
            } else {
                "local"
            },
            ctx.started_on.replace([':', '-'], "")
        ));
        let mut release = ImageRelease {
            image: image.name.clone(),
            repository: spec.repository.clone(),
            subject: subject.clone(),
            digest: image.manifest_digest.to_string(),
            tags: spec.tags.clone(),
            accepted: decision.accepted,
            decision,
            tagged: Vec::new(),
            evidence: Vec::new(),
            record: record_path.clone(),
            provenance: statement.clone(),
        };

        // Evidence goes to the candidate digest, accepted or not, when the
        // candidate is in the store.
        if published {
            let manifest_size = cross.as_ref().map(|c| c.manifest_size).unwrap_or_default();
            for (predicate, st) in [
                (provenance::SLSA_PROVENANCE_V1, &statement),
                (provenance::TEST_RESULT_V01, &gate_statement),
            ] {
                let env = canonical_json(&lane_core::signing::envelope(
                    &canonical_json(st)?.bytes,
                    opts.signer.as_ref(),
                ))?;
                let a = evidence::artifact(
                    MEDIA_DSSE,
                    MEDIA_DSSE,
                    env,
                    image.manifest_digest.as_str(),
                    manifest_size,
                    &[(ANNOTATION_PREDICATE, predicate)],
                )?;
                match store.attach(&spec.repository, image.manifest_digest.as_str(), &a) {
                    Ok(d) => release.evidence.push(d),
                    Err(e) => reject(&mut release, format!("attaching evidence failed: {e:#}")),
                }
            }
        }
        if release.accepted {
            for tag in &spec.tags {
                progress.say(format_args!(
                    "accept: tag {}:{tag} -> {}",
                    spec.repository, image.manifest_digest
                ));
                match store.tag(&spec.repository, image.manifest_digest.as_str(), tag) {
                    Ok(()) => release.tagged.push(tag.clone()),
                    Err(e) => {
                        reject(&mut release, format!("tagging {tag} failed: {e:#}"));
                        break;
                    }
                }
            }
        }
        let record = record_json(&release, &gate_statement, &ctx)?;
        if published {
            let a = evidence::artifact(
                MEDIA_RELEASE_RECORD,
                MEDIA_RELEASE_RECORD,
                record.clone(),
                image.manifest_digest.as_str(),
                cross.as_ref().map(|c| c.manifest_size).unwrap_or_default(),
                &[(ANNOTATION_PREDICATE, MEDIA_RELEASE_RECORD)],
            )?;
            if let Ok(d) = store.attach(&spec.repository, image.manifest_digest.as_str(), &a) {
                release.evidence.push(d);
            }
        }
        crate::adapters::cache::write_atomic(&record_path, &record.bytes)?;
        stages.end("provenance, evidence, accept/reject");
        images.push(release);
    }
    let accepted = images.iter().all(|i| i.accepted);
    Ok(ReleaseReport {
        store: store.describe(),
        builder: ctx.builder,
        signing_key: opts.signer.as_ref().map(|s| s.keyid.clone()),
        signing_key_trusted: opts.signer.as_ref().is_some_and(|s| {
            lane_core::signing::trusted_keys(&ctx.policy.trusted_keys)
                .0
                .iter()
                .any(|k| k.keyid == s.keyid)
        }),
        accepted,
        images,
        stages: stages.spent,
    })
}

fn reject(release: &mut ImageRelease, why: String) {
    release.accepted = false;
    release.decision.accepted = false;
    release.decision.failures.push(why);
}

fn record_json(release: &ImageRelease, gate_statement: &Value, ctx: &Context_) -> Result<Blob> {
    canonical_json(&json!({
        "release": release,
        "gateStatement": gate_statement,
        "startedOn": ctx.started_on,
        "finishedOn": now(),
    }))
}

fn source_state(git: &GitFacts) -> GateResult {
    GateResult::check(
        "source-state",
        !git.dirty && !git.revision.is_empty(),
        if git.dirty {
            format!(
                "the work tree has uncommitted changes on {}; commit or stash them",
                git.revision
            )
        } else {
            format!("clean checkout of {}", git.revision)
        },
        serde_json::to_value(git).unwrap_or_default(),
    )
}

/// Whether the committed locks still match the image definitions and the
/// machine's package index (`cargo xtask lock --check`): `Ok(changes)`.
fn lock_freshness(ws: &Workspace, images: &[lane_core::spec::ImageSpec]) -> Result<Vec<String>> {
    if images.iter().all(|i| i.debian.is_none()) {
        return Ok(Vec::new()); // nothing is locked
    }
    match crate::adapters::apt::lock(&ws.root, images, true) {
        Ok(report) => Ok(report.changes),
        Err(e) => Ok(vec![format!("{e:#}")]),
    }
}

fn pinned_inputs(
    ws: &Workspace,
    spec: &lane_core::spec::ImageSpec,
    stale: &[String],
) -> Result<GateResult> {
    // Tag-only bases cannot be parsed (spec::parse_base), so every base is
    // scratch, a workspace image or pinned by digest; the locks must be fresh.
    let base = spec.base.to_string();
    let lockfiles = lockfile_digests(ws)?;
    Ok(GateResult::check(
        "pinned-inputs",
        stale.is_empty(),
        if stale.is_empty() {
            format!("base {base}; {} lockfile(s), fresh", lockfiles.len())
        } else {
            format!("stale lock: {}", stale.join("; "))
        },
        json!({ "base": base, "lockfiles": lockfiles, "stale": stale }),
    ))
}

/// `lockfiles/*` with their sha256, sorted by path.
pub fn lockfile_digests(ws: &Workspace) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let dir = ws.root.join("lockfiles");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let e = e?;
            if e.file_type()?.is_file() {
                let bytes = std::fs::read(e.path())?;
                out.insert(
                    format!("lockfiles/{}", e.file_name().to_string_lossy()),
                    sha256(&bytes).to_string(),
                );
            }
        }
    }
    Ok(out)
}

fn reproducible(repro: &Result<crate::commands::repro::ReproReport>, name: &str) -> GateResult {
    match repro {
        Err(e) => GateResult::failed(
            "reproducible",
            format!("the second build failed: {e:#}"),
            Value::Null,
        ),
        Ok(r) => match r.images.iter().find(|i| i.name == name) {
            None => GateResult::failed(
                "reproducible",
                "the second build did not produce this image",
                Value::Null,
            ),
            Some(i) => GateResult::check(
                "reproducible",
                i.equal,
                i.difference
                    .clone()
                    .unwrap_or_else(|| format!("both builds gave {}", i.first)),
                serde_json::to_value(i).unwrap_or_default(),
            ),
        },
    }
}

/// Gates that look at the built image itself: drift (and unused packages)
/// over the merged file system, and the smoke commands in the engine.
fn image_gates(
    ws: &Workspace,
    spec: &lane_core::spec::ImageSpec,
    image: &BuiltImage,
    engine_error: Option<&anyhow::Error>,
    progress: &Reporter,
) -> Vec<GateResult> {
    let mut out = Vec::new();
    progress.say(format_args!("gates: drift of {}", image.name));
    let drift = (|| -> Result<lane_core::drift::ImageDrift> {
        let index =
            crate::commands::drift::read_index(&ws.root.join("lockfiles/library-index.toml"))?;
        let (fs, runtime) = crate::commands::drift::read_layout(&image.layout)?;
        let manifest = lane_core::drift::CuratedManifest::from_image(&fs);
        Ok(lane_core::drift::analyse(
            &image.name,
            &fs,
            &manifest,
            &index,
            &runtime,
        ))
    })();
    match drift {
        Ok(d) => {
            let report = lane_core::drift::DriftReport {
                images: vec![d.clone()],
            };
            let failures =
                lane_core::drift::failures(&report, &lane_core::drift::DriftPolicy::default());
            let evidence = serde_json::to_value(&d).unwrap_or_default();
            out.push(GateResult::check(
                "no-drift",
                failures.is_empty(),
                if failures.is_empty() {
                    format!(
                        "{} ELF objects, every library and interpreter resolves",
                        d.objects.len()
                    )
                } else {
                    failures.join("; ")
                },
                evidence.clone(),
            ));
            out.push(GateResult::check(
                "no-unused-packages",
                d.unused_packages.is_empty(),
                if d.unused_packages.is_empty() {
                    "every curated package is needed".to_string()
                } else {
                    format!("unused: {}", d.unused_packages.join(", "))
                },
                json!({ "unused_packages": d.unused_packages }),
            ));
        }
        Err(e) => out.push(GateResult::failed(
            "no-drift",
            format!("the drift analysis failed: {e:#}"),
            Value::Null,
        )),
    }

    progress.say(format_args!(
        "gates: smoke of {} in the Docker Engine",
        image.name
    ));
    let smoke = (|| -> Result<lane_core::smoke::SmokeReport> {
        if let Some(e) = engine_error {
            anyhow::bail!("{e:#}");
        }
        if spec.smoke.is_empty() {
            anyhow::bail!(
                "image {} declares no smoke command; add a [[smoke]] entry to {}/image.toml",
                spec.name,
                spec.dir
            );
        }
        let loaded = crate::adapters::layout::read_smoke_image(
            &image.name,
            &image.layout,
            image.manifest_digest.as_str(),
        )?;
        let opts = crate::adapters::engine::SmokeOptions {
            quiet: true,
            ..crate::adapters::engine::SmokeOptions::default()
        };
        crate::adapters::engine::smoke(&loaded, &spec.smoke, &opts)
    })();
    out.push(match smoke {
        Ok(r) => {
            let failed: Vec<String> = r
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.clone())
                .collect();
            GateResult::check(
                "smoke",
                failed.is_empty(),
                if failed.is_empty() {
                    format!(
                        "{} command(s) passed in image {}",
                        r.checks.len(),
                        r.image_id
                    )
                } else {
                    format!(
                        "failed: {}",
                        lane_core::smoke::check(&r)
                            .err()
                            .map(|e| format!("{e:#}"))
                            .unwrap_or_default()
                    )
                },
                serde_json::to_value(&r).unwrap_or_default(),
            )
        }
        Err(e) => GateResult::failed("smoke", format!("{e:#}"), Value::Null),
    });
    out
}

fn provenance_inputs(
    ws: &Workspace,
    ctx: &Context_,
    image: &BuiltImage,
    subject: &str,
) -> Result<ProvenanceInputs> {
    let source = ws.source_url()?;
    let mut deps = vec![Dependency::uri(
        &format!("git+{source}@{}", ctx.git.revision),
        "gitCommit",
        &ctx.git.revision,
    )];
    if let Ok(lock) = std::fs::read(ws.root.join("Cargo.lock")) {
        deps.push(Dependency::named(
            "Cargo.lock",
            "sha256",
            sha256(&lock).as_str(),
        ));
    }
    for (path, digest) in lockfile_digests(ws)? {
        deps.push(Dependency::named(&path, "sha256", &digest));
    }
    if let Some(base) = base_of(image) {
        deps.push(Dependency::uri(&base.0, "sha256", &base.1));
    }
    let tc = crate::adapters::workspace::toolchain()?;
    Ok(ProvenanceInputs {
        subject_name: subject.to_string(),
        manifest_digest: image.manifest_digest.to_string(),
        image: image.name.clone(),
        tags: image.tags.clone(),
        source_repository: source,
        revision: ctx.git.revision.clone(),
        tree_clean: !ctx.git.dirty,
        policy_path: POLICY_PATH.into(),
        policy_digest: ctx.policy_digest.clone(),
        rustc: tc.rustc,
        lane_version: env!("CARGO_PKG_VERSION").into(),
        encoder: lane_core::layer::encoder_id(),
        dependencies: deps,
        builder: ctx.builder.clone(),
        started_on: ctx.started_on.clone(),
        finished_on: now(),
    })
}

/// The base name and digest recorded in the image's manifest annotations.
fn base_of(image: &BuiltImage) -> Option<(String, String)> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(image.layout.join("index.json")).ok()?).ok()?;
    let digest = index["manifests"][0]["digest"]
        .as_str()?
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(image.layout.join("blobs/sha256").join(digest)).ok()?,
    )
    .ok()?;
    let ann = &manifest["annotations"];
    Some((
        ann[lane_core::oci::ANNOTATION_BASE_NAME]
            .as_str()?
            .to_string(),
        ann[lane_core::oci::ANNOTATION_BASE_DIGEST]
            .as_str()?
            .to_string(),
    ))
}

/// The one-screen summary.
pub fn summary(report: &ReleaseReport) -> String {
    let mut out = String::new();
    for i in &report.images {
        out.push_str(&format!(
            "{} {}@{}: {}\n",
            i.image,
            i.subject,
            i.digest,
            if i.accepted {
                format!("ACCEPTED, tagged {}", i.tagged.join(", "))
            } else {
                "REJECTED, no tag moved".into()
            }
        ));
        for g in &i.decision.gates {
            let state = if i.decision.required.contains(&g.gate) {
                g.state.to_string()
            } else {
                // Information only: not passing is a warning, not a failure.
                if g.state == lane_core::gates::GateState::Passed {
                    "(passed)".into()
                } else {
                    "(warned)".into()
                }
            };
            out.push_str(&format!("  {:<22} {:<9} {}\n", g.gate, state, g.summary));
        }
        out.push_str("  (gates in parentheses are not required by the policy for this store)\n");
        for f in i
            .decision
            .failures
            .iter()
            .filter(|f| !i.decision.gates.iter().any(|g| f.starts_with(&g.gate)))
        {
            out.push_str(&format!("  {f}\n"));
        }
        out.push_str(&format!("  record: {}\n", i.record.display()));
    }
    out.push_str(&format!(
        "builder: {}\nstore: {}\n",
        report.builder.id, report.store
    ));
    out.push_str(&match &report.signing_key {
        Some(k) if report.signing_key_trusted => format!("evidence signed by key {k}\n"),
        Some(k) => format!(
            "evidence signed by key {k}, which {POLICY_PATH} does not trust: verify will refuse it (add its public key to [signing] trusted_keys)\n"
        ),
        None => format!(
            "evidence UNSIGNED: no signing key (--signing-key FILE, ${} or ${}); verify will refuse it\n",
            lane_core::signing::ENV_KEY_FILE,
            lane_core::signing::ENV_KEY
        ),
    });
    out
}
