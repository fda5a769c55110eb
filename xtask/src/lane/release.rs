//! The release engine (`cargo xtask release`, and the bench's releases). Preflight, build, gates, publish the
//! candidate by digest, cross-check, provenance, then accept (move the tags)
//! or reject (move nothing). Evidence is attached to the candidate digest in
//! both cases, so a rejection is auditable too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::adapters::fault;
use crate::adapters::workspace::{GitFacts, Toolchain, Workspace};
use crate::lane::build::{self, BuildOptions, BuildReport};
use crate::lane::repro::ReproReport;
use crate::report::Reporter;
use lane_core::debian::LockedPackage;
use lane_core::distribution::BuiltImage;
use lane_core::evidence::{self, ANNOTATION_PREDICATE, MEDIA_DSSE, MEDIA_RELEASE_RECORD};
use lane_core::gates::{self, Decision, GateName, GateResult, POLICY_PATH, Policy};
use lane_core::id::{Digest, Repository, Tag};
use lane_core::oci::{Blob, canonical_json};
use lane_core::provenance::{self, BuilderRun, Input, ProvenanceInputs, Subject};
use lane_core::reuse::{self, Proof};
use lane_core::sbom::{self, Binary, DebPackage, PlacedFile, SbomInputs};
use lane_core::spec::{BaseRef, ImageSpec};
use lane_core::store::{Published, Store};

#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    pub images: Vec<String>,
    pub quiet: bool,
    /// Signs the provenance, gate and SBOM statements; `None` leaves them
    /// unsigned (and `cargo xtask verify` then refuses them).
    pub signer: Option<lane_core::signing::Signer>,
    /// The shared action cache (`--cache`, `$LANE_CACHE`).
    pub cache: Option<String>,
    /// Run every gate, carrying nothing over from earlier evidence of the
    /// same digest (`--no-reuse`).
    pub no_reuse: bool,
}

/// The outcome for one image, as `release --json` prints it and as the
/// release record stores it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRelease {
    pub image: String,
    pub repository: Repository,
    pub subject: String,
    pub digest: Digest,
    /// `SUBJECT@DIGEST`: what `verify`, `promote` and `audit` take as it is
    /// (`HOST[:PORT]/PATH/REPO@sha256:...` or `local/REPO@sha256:...`).
    pub reference: String,
    pub tags: Vec<Tag>,
    pub accepted: bool,
    pub decision: Decision,
    /// Tags this run moved, each read back (empty on rejection);
    /// `tag_checks` says whether each still names this digest.
    pub tagged: Vec<Tag>,
    /// Each moved tag checked once more after the record was attached: a
    /// registry has no compare-and-swap, so another run may have moved it
    /// since. A tag that no longer names this digest is reported here and
    /// makes the run fail (docs/faults.md, races).
    pub tag_checks: Vec<TagHeld>,
    /// Digests of the attached evidence artifacts.
    pub evidence: Vec<Digest>,
    pub record: PathBuf,
    pub provenance: Value,
    /// What the action cache did for this image in this run's build
    /// (`misses` layers were encoded and compressed here).
    pub cache: lane_core::distribution::CacheStats,
    /// Not built: the target already held this digest, built from the
    /// same input key, with reusable evidence (nothing compressed, fetched
    /// or built by cargo).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// Whether a tag this run moved still names its digest at the final check.
#[derive(Debug, Clone, Serialize)]
pub struct TagHeld {
    pub tag: Tag,
    /// When this run sent the move (RFC 3339, nanoseconds).
    pub moved_at: String,
    /// When the move's own read-back returned: the move took effect
    /// between `moved_at` and this.
    pub confirmed_at: String,
    /// When the final read was sent, after the record was attached.
    pub checked_at: String,
    /// What the tag named then.
    pub names: Option<Digest>,
    /// `names` is this run's digest.
    pub held: bool,
}

/// Who ran the lane, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BuilderView {
    /// A CI workflow's URI, or the local builder's URI.
    pub id: String,
    /// True only for a verified CI identity the policy trusts (a local
    /// builder is never accepted into a registry).
    pub authoritative: bool,
    pub invocation_id: String,
    /// The verified OIDC identity (claims, key, token digest); null for the
    /// local builder.
    pub identity: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub store: String,
    pub builder: BuilderView,
    /// Keyid of the key that signed the evidence; null when unsigned.
    pub signing_key: Option<String>,
    /// Whether the policy's `[signing] trusted_keys` holds that key (if not,
    /// `cargo xtask verify` will refuse this evidence).
    pub signing_key_trusted: bool,
    pub accepted: bool,
    /// Every tag this run moved still named its digest at the final check.
    pub tags_held: bool,
    pub images: Vec<ImageRelease>,
    /// What the shared cache did in the build (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_cache: Option<crate::adapters::remote_cache::RemoteStats>,
    /// Wall-clock seconds of each stage, in order.
    pub stages: Vec<(String, f64)>,
}

/// Accumulates the time spent in each stage.
pub struct Stages {
    mark: std::time::Instant,
    spent: Vec<(String, f64)>,
}

impl Stages {
    pub fn new() -> Stages {
        Stages {
            mark: std::time::Instant::now(),
            spent: Vec::new(),
        }
    }

    /// Charges the time since the last mark to `name`.
    pub fn end(&mut self, name: &str) {
        let secs = self.mark.elapsed().as_secs_f64();
        self.mark = std::time::Instant::now();
        match self.spent.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += secs,
            None => self.spent.push((name.to_string(), secs)),
        }
    }
}

impl Default for Stages {
    fn default() -> Stages {
        Stages::new()
    }
}

/// Step 1 of the lane: every fact the gates and the provenance share,
/// gathered once. Preflight (store and engine) comes first, before any
/// build work; then the build, while the independent second build and the
/// lock freshness check run in the background ([`Pending`]): their results
/// (`repro`, `stale`) are filled in by [`Pending::finish`].
pub struct Facts {
    pub git: GitFacts,
    pub policy: Policy,
    pub policy_digest: Digest,
    pub builder: BuilderRun,
    pub started_on: String,
    /// Every image of the workspace, and the ones being released.
    pub all: Vec<ImageSpec>,
    pub selected: Vec<ImageSpec>,
    /// The engine's preflight: an error fails the smoke gate (the lane goes
    /// on, so the rejection is recorded and attached to the candidate).
    pub engine: std::result::Result<(), String>,
    pub built: BuildReport,
    pub repro: std::result::Result<ReproReport, String>,
    /// Differences `lock --check` found (empty: fresh).
    pub stale: Vec<String>,
    pub source_url: String,
    pub toolchain: Toolchain,
    /// `lockfiles/*` and Cargo.lock with their sha256.
    pub lockfiles: BTreeMap<String, Digest>,
    /// The proofs of the images not built: the target held them
    /// (`commands::held`).
    pub held: BTreeMap<String, Proof>,
}

/// Step 2's output for one image: the candidate in the store (when the
/// publish worked), the statements made about it, every gate result.
pub struct Candidate {
    pub image: BuiltImage,
    pub spec: ImageSpec,
    pub subject: Subject,
    pub published: Option<Published>,
    pub provenance: Value,
    /// The SPDX document; `None` when it could not be made (then the
    /// sbom-complete gate failed, saying why) or when the digest's earlier
    /// signed SBOM stands (its gates were carried over).
    pub sbom: Option<Value>,
    pub results: Vec<GateResult>,
    /// The earlier evidence whose image-bound gates this release carried
    /// over instead of running them.
    pub proof: Option<Proof>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The time to nanoseconds: orders the tag moves and checks of concurrent
/// runs on one machine.
fn now_precise() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Runs the lane: collect the facts, then per released image run the gates,
/// decide, and apply the decision. Returns the report; the caller exits 0
/// only when every image was accepted.
pub fn release(
    ws: &Workspace,
    opts: &ReleaseOptions,
    store: &mut dyn Store,
) -> Result<ReleaseReport> {
    let progress = Reporter { quiet: opts.quiet };
    let mut stages = Stages::new();
    let (mut facts, mut pending) = collect(ws, opts, store, &progress, &mut stages)?;
    let mut images = Vec::new();
    // Named images are released; their workspace bases are built (their
    // layers are part of the image) but not released on their own.
    let released: Vec<BuiltImage> = facts
        .built
        .images
        .iter()
        .filter(|i| opts.images.is_empty() || opts.images.contains(&i.name))
        .cloned()
        .collect();
    // What each candidate digest already proved in the target store: its
    // image-bound gates are carried over, not run again. When every image
    // carries them, the second build is no longer needed.
    let proofs: Vec<Option<Proof>> = released
        .iter()
        .map(|image| earlier_proof(&facts, image, store, opts.no_reuse, &progress))
        .collect();
    stages.end("gates: earlier evidence");
    let needed: Vec<String> = released
        .iter()
        .zip(&proofs)
        .filter(|(_, p)| p.is_none())
        .map(|(i, _)| i.name.clone())
        .collect();
    if needed.is_empty() && !released.is_empty() {
        progress
            .say("gates: reproducible carried over for every image; the second build is stopped");
        pending.cancel_second_build();
    } else if needed.len() < released.len() {
        // Only the images without an earlier proof (and their bases) are
        // built a second time.
        progress.say(format_args!(
            "gates: reproducible carried over for {} image(s); the second build restarts for {} only",
            released.len() - needed.len(),
            needed.join(", ")
        ));
        if let Some(source) = &facts.built.source {
            pending.restrict_second_build(ws, &needed, source);
        }
    }
    // The image checks, the candidates' publish and their statements run
    // while the second build and the lock check finish in the background.
    // The image checks (drift, smoke) of independent images run at once,
    // as many as the build runs; each image's result is its own.
    let work: Vec<(&BuiltImage, Option<&Proof>)> = released
        .iter()
        .zip(proofs.iter().map(Option::as_ref))
        .collect();
    let checks = build::in_parallel(&work, build::default_jobs(), |(image, proof)| {
        let spec = facts.selected.iter().find(|s| s.name == image.name);
        spec.map(|spec| match proof {
            Some(p) => ImageChecks::carried(p),
            None => image_gates(ws, spec, image, facts.engine.as_ref().err(), &progress),
        })
    });
    stages.end("gates: image checks");
    let mut candidates = Vec::new();
    for ((image, checks), proof) in released.into_iter().zip(checks).zip(proofs) {
        let checks = checks.context("built image not selected")?;
        candidates.push(run_gates(
            ws,
            &facts,
            image,
            checks,
            proof,
            store,
            &progress,
            &mut stages,
        )?);
    }
    let stopped = pending.finish(&mut facts, &progress, &mut stages);
    // The opt-in security-age gate: what the index offers today, by the
    // policy's choice only.
    let security = facts.policy.security_update_max_age_days.map(|days| {
        progress.say(format_args!(
            "gates: security updates offered for longer than {days} days (the policy's security_update_max_age_days)"
        ));
        crate::adapters::apt::security_updates(&ws.root).map_err(|e| format!("{e:#}"))
    });
    for mut candidate in candidates {
        if let (Some(updates), Some(days)) = (&security, facts.policy.security_update_max_age_days)
        {
            candidate
                .results
                .push(security_updates(ws, &facts, &candidate.spec, updates, days));
        }
        // In the gates' order: source-state, pinned-inputs, reproducible, ...
        let at = 1.min(candidate.results.len());
        candidate.results.splice(
            at..at,
            [
                pinned_inputs(&candidate.spec, &facts.stale, &facts.lockfiles),
                match &candidate.proof {
                    Some(p) => p.carried(GateName::Reproducible),
                    None => reproducible(&facts.repro, &candidate.image.name),
                },
            ],
        );
        let decision = decide(&facts.policy, store.is_registry(), &candidate.results);
        images.push(apply(
            ws,
            &facts,
            candidate,
            decision,
            store,
            opts.signer.as_ref(),
            &progress,
        )?);
        stages.end("provenance, evidence, accept/reject");
    }
    // A stopped second build that was still downloading ends here, after
    // the release's own work.
    if !stopped.is_empty() {
        drop(stopped);
        stages.end("second build stopping (waiting)");
    }
    let accepted = images.iter().all(|i| i.accepted);
    let tags_held = images.iter().all(|i| i.tag_checks.iter().all(|t| t.held));
    Ok(ReleaseReport {
        tags_held,
        store: store.describe(),
        builder: BuilderView {
            id: facts.builder.id.clone(),
            authoritative: facts.builder.identity.is_some()
                && lane_core::identity::trusted(&facts.policy.trusted_builders, &facts.builder.id)
                    .is_ok(),
            invocation_id: facts.builder.invocation_id.clone(),
            identity: facts.builder.identity.as_ref().map(|i| i.to_json()),
        },
        signing_key: opts.signer.as_ref().map(|s| s.keyid.clone()),
        signing_key_trusted: opts.signer.as_ref().is_some_and(|s| {
            lane_core::signing::trusted_keys(&facts.policy.trusted_keys)
                .0
                .iter()
                .any(|k| k.keyid == s.keyid)
        }),
        accepted,
        images,
        shared_cache: facts.built.shared_cache.clone(),
        stages: stages.spent,
    })
}

/// What runs in the background while the candidates are built, checked
/// and published: the independent second build and `lock --check`.
pub struct Pending {
    second: Option<crate::lane::repro::SecondBuild>,
    /// Second builds told to stop, waited for only when the release ends.
    stopped: Vec<crate::lane::repro::SecondBuild>,
    lock: std::thread::JoinHandle<Result<Vec<String>>>,
}

impl Pending {
    /// Stops the second build: no image needs it.
    pub fn cancel_second_build(&mut self) {
        if let Some(second) = self.second.take() {
            self.stopped.push(second.stop());
        }
    }

    /// Stops the second build and starts one of `names` only.
    pub fn restrict_second_build(
        &mut self,
        ws: &Workspace,
        names: &[String],
        source: &lane_core::oci::SourceFacts,
    ) {
        self.cancel_second_build();
        self.second = Some(crate::lane::repro::SecondBuild::start_only(
            ws, names, source,
        ));
    }

    /// Waits for both and fills in `facts.repro` and `facts.stale`.
    /// Returns the stopped second builds: dropping them (when the release
    /// is done) waits for them to end and removes their folders.
    pub fn finish(
        self,
        facts: &mut Facts,
        progress: &Reporter,
        stages: &mut Stages,
    ) -> Vec<crate::lane::repro::SecondBuild> {
        facts.repro = match self.second {
            Some(second) => {
                progress.say("gates: reproducible (waiting for the second build)");
                second
                    .compare(&facts.built.images)
                    .map_err(|e| format!("{e:#}"))
            }
            None => Err(
                "the second build was stopped: every image carried its reproducibility over"
                    .to_string(),
            ),
        };
        stages.end("gate: reproducible (waiting)");
        facts.stale = match self.lock.join() {
            Ok(Ok(stale)) => stale,
            Ok(Err(e)) => vec![format!("{e:#}")],
            Err(_) => vec!["the lock check's thread panicked".to_string()],
        };
        stages.end("gate: pinned inputs (waiting)");
        self.stopped
    }
}

/// Step 1: preflight (store, then engine); then the build, with the second
/// build and the lock check started in the background.
pub fn collect(
    ws: &Workspace,
    opts: &ReleaseOptions,
    store: &mut dyn Store,
    progress: &Reporter,
    stages: &mut Stages,
) -> Result<(Facts, Pending)> {
    let names = &opts.images;
    let started_on = now();
    let (policy, policy_digest) = ws.policy()?;

    // Preflight: before any build work. First who runs the lane (a CI
    // identity is verified, or refused here with the fix), then the store.
    let builder =
        crate::adapters::oidc::builder_run(&ws.root, &policy, store.is_registry(), progress)?;
    let all = ws.load_images()?;
    let selected = crate::adapters::workspace::select(&all, names)?;
    let repositories: Vec<Repository> = selected
        .iter()
        .filter(|i| names.is_empty() || names.contains(&i.name))
        .map(|i| i.repository.clone())
        .collect();
    progress.say(format_args!("preflight: {}", store.describe()));
    store.preflight(&repositories)?;
    // The engine is checked now too. Without it the smoke gate fails, but the
    // lane goes on to build and publish the candidate, so that the rejection
    // is recorded and attached to the candidate digest.
    let engine = match crate::adapters::engine::probe() {
        Ok(facts) => {
            progress.say(format_args!(
                "preflight: Docker Engine {} at {}",
                facts.version, facts.address
            ));
            Ok(())
        }
        Err(e) => {
            progress.error(format_args!(
                "preflight: {e:#}\n       the smoke gate will fail and the release will be rejected, unless the candidate's earlier evidence carries it over"
            ));
            Err(format!("{e:#}"))
        }
    };
    stages.end("preflight");
    let (source, git) = crate::adapters::workspace::source_facts(ws)?;

    // The independent second build (from a copy, from empty caches, never
    // the shared cache) and `lock --check` need nothing of the build:
    // they start now and are waited for before the decision.
    progress.say("gates: reproducible (second build from a copy, in the background)");
    let second = crate::lane::repro::SecondBuild::start(ws, names, &source);
    progress.say("gates: lockfiles fresh (lock --check, in the background)");
    let lock = {
        let (ws, all) = (ws.clone(), all.clone());
        std::thread::spawn(move || lock_freshness(&ws, &all))
    };
    let pending = Pending {
        second: Some(second),
        stopped: Vec::new(),
        lock,
    };

    progress.say("build");
    let mut build_opts = BuildOptions::for_workspace(ws);
    build_opts.quiet = progress.quiet;
    build_opts.source = Some(source);
    build_opts.shared_cache = crate::lane::build::shared_cache(
        opts.cache.clone(),
        crate::adapters::oidc::authoritative(&policy, &builder),
    );
    let (built, held) = build_or_hold(
        ws,
        opts,
        &policy,
        &policy_digest,
        store,
        &build_opts,
        progress,
    )?;
    stages.end("build");
    let facts = Facts {
        git,
        policy,
        policy_digest,
        builder,
        started_on,
        all,
        selected,
        engine,
        built,
        repro: Err("the second build has not finished".to_string()),
        stale: vec!["the lock check has not finished".to_string()],
        source_url: ws.source_url()?,
        toolchain: crate::adapters::workspace::toolchain()?,
        lockfiles: lockfile_digests(ws)?,
        held,
    };
    Ok((facts, pending))
}

/// The build of the release's images, less those the target already
/// holds from the same inputs with reusable evidence (`commands::held`):
/// those are not built, and their proofs are returned.
fn build_or_hold(
    ws: &Workspace,
    opts: &ReleaseOptions,
    policy: &Policy,
    policy_digest: &Digest,
    store: &mut dyn Store,
    build_opts: &BuildOptions,
    progress: &Reporter,
) -> Result<(BuildReport, BTreeMap<String, Proof>)> {
    let (plan, git) = build::plan(ws, &opts.images, build_opts)?;
    if let Some(c) = &build_opts.cancel {
        c.check()?;
    }
    let remote = build::open_shared(build_opts)?;
    let released = |name: &str| opts.images.is_empty() || opts.images.iter().any(|n| n == name);
    let held = if opts.no_reuse {
        BTreeMap::new()
    } else {
        crate::lane::held::find(
            &plan,
            &released,
            &build_opts.cache_dir,
            remote.as_ref(),
            store,
            &mut |store, p, digest| {
                proof_of(policy, policy_digest, &p.spec, digest, store, progress)
            },
            &ws.root.join("target/lane-held"),
            progress,
        )?
    };
    let rest = crate::lane::held::rest(&plan, &held, &released);
    let (mut images, shared_cache) = build::execute_with(ws, &rest, build_opts, remote)?;
    let mut proofs = BTreeMap::new();
    for (name, h) in held {
        images.push(h.image);
        proofs.insert(name, h.proof);
    }
    // In the plan's order.
    images.sort_by_key(|i| plan.images.iter().position(|p| p.spec.name == i.name));
    Ok((
        BuildReport {
            images,
            shared_cache,
            source: Some(plan.source),
            git,
        },
        proofs,
    ))
}

/// Step 2 for one image: the image checks' results (run beforehand, at once
/// for independent images), the candidate published by digest and
/// cross-checked, the provenance and SBOM made and checked.
pub fn run_gates(
    ws: &Workspace,
    facts: &Facts,
    image: BuiltImage,
    checks: ImageChecks,
    proof: Option<Proof>,
    store: &mut dyn Store,
    progress: &Reporter,
    stages: &mut Stages,
) -> Result<Candidate> {
    let spec = facts
        .selected
        .iter()
        .find(|s| s.name == image.name)
        .context("built image not selected")?
        .clone();
    // pinned-inputs and reproducible come from the background work,
    // added after it finished (`release`).
    let mut results = vec![source_state(&facts.git)];
    results.extend(checks.results);

    progress.say(format_args!(
        "publish {} by digest to {}",
        image.name,
        store.describe()
    ));
    let published = match store.publish_candidate(&image) {
        Ok(c) => {
            results.push(GateResult::check(
                GateName::PublishCrossCheck,
                c.ok,
                if c.ok {
                    "the store holds exactly the built digest".to_string()
                } else {
                    c.failures.join("; ")
                },
                serde_json::to_value(&c)?,
            ));
            Some(c)
        }
        Err(e) => {
            results.push(GateResult::failed(
                GateName::PublishCrossCheck,
                format!("{e:#}"),
                Value::Null,
            ));
            None
        }
    };
    stages.end("publish and cross-check");

    let subject = Subject {
        name: store.subject_name(&spec.repository),
        digest: image.manifest_digest.clone(),
    };
    let debs = image_debs(ws, &facts.all, &spec);
    let provenance = match &debs {
        Ok(debs) => provenance::provenance_statement(&provenance_inputs(
            facts,
            &spec,
            &image,
            &subject,
            debs,
            &image_wheels(&ws.root, &facts.all, &spec)?,
        )?),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let (provenance, missing) = match provenance {
        Ok(p) => {
            let missing = provenance::missing_fields(&p);
            (p, missing)
        }
        Err(e) => (Value::Null, vec![format!("{e:#}")]),
    };
    results.push(GateResult::check(
        GateName::ProvenanceComplete,
        missing.is_empty(),
        if missing.is_empty() {
            "every field present".to_string()
        } else {
            format!("missing: {}", missing.join(", "))
        },
        json!({ "missing": missing }),
    ));
    results.push(authoritative_builder(&facts.policy, &facts.builder));

    // Carried over: the digest's earlier signed SBOM stands (its contents
    // are those of the same bytes).
    let sbom = match &proof {
        Some(p) => {
            results.push(p.carried(GateName::SbomComplete));
            None
        }
        None => {
            let sbom = debs.and_then(|debs| {
                let inputs =
                    sbom_inputs(ws, facts, &spec, &image, &subject, &debs, &checks.binaries)?;
                sbom::sbom(&inputs)
            });
            results.push(sbom_complete(&sbom, &checks.curated));
            sbom.ok()
        }
    };
    Ok(Candidate {
        image,
        spec,
        subject,
        published,
        provenance,
        sbom,
        results,
        proof,
    })
}

/// Step 3: the policy's required gates over the results. Pure.
pub fn decide(policy: &Policy, to_registry: bool, results: &[GateResult]) -> Decision {
    gates::decide(&policy.required(to_registry), results)
}

/// Step 4: attach the evidence to the candidate digest (accepted or not,
/// when the candidate is in the store), move the tags only when accepted,
/// and write the release record.
pub fn apply(
    ws: &Workspace,
    facts: &Facts,
    candidate: Candidate,
    decision: Decision,
    store: &mut dyn Store,
    signer: Option<&lane_core::signing::Signer>,
    progress: &Reporter,
) -> Result<ImageRelease> {
    fault::point(fault::RELEASE_GATES_RUN);
    let Candidate {
        sbom,
        proof,
        image,
        spec,
        subject,
        published,
        provenance,
        ..
    } = candidate;
    // The commit the image-bound gates ran on: this one, or the earlier
    // one whose proof was carried over.
    let basis = provenance::GateBasis {
        definitions: reuse::definitions(&spec, env!("CARGO_PKG_VERSION")),
        revision: proof
            .as_ref()
            .map_or(facts.git.revision.clone(), |p| p.reused.revision.clone()),
        input_key: image.input_key.clone(),
    };
    let gate_statement = provenance::gate_statement(
        &subject,
        &decision,
        POLICY_PATH,
        &facts.policy_digest,
        Some(facts.builder.invocation_id.as_str()),
        Some(&basis),
    );
    // One record per run: a later run of the same digest (another store, a
    // rejection) never overwrites an earlier record.
    let record_path = ws.root.join("target/releases").join(format!(
        "{}-{}-{}-{}.json",
        image.name,
        image.manifest_digest.short(),
        if store.is_registry() {
            "registry"
        } else {
            "local"
        },
        facts.started_on.replace([':', '-'], "")
    ));
    let mut release = ImageRelease {
        image: image.name.clone(),
        repository: spec.repository.clone(),
        subject: subject.name.clone(),
        digest: image.manifest_digest.clone(),
        reference: format!("{}@{}", subject.name, image.manifest_digest),
        tags: spec.tags.clone(),
        accepted: decision.accepted,
        decision,
        tagged: Vec::new(),
        tag_checks: Vec::new(),
        evidence: Vec::new(),
        record: record_path.clone(),
        provenance: provenance.clone(),
        cache: image.cache.clone(),
        held: image.held,
    };

    if let Some(p) = &published {
        let sbom_statement = sbom.map(|doc| {
            json!({
                "_type": provenance::STATEMENT_TYPE,
                "subject": [{ "name": subject.name, "digest": { "sha256": subject.digest.hex() } }],
                "predicateType": sbom::PREDICATE_TYPE,
                "predicate": doc,
            })
        });
        let mut signed = vec![
            (MEDIA_DSSE, provenance::SLSA_PROVENANCE_V1, &provenance),
            (MEDIA_DSSE, provenance::TEST_RESULT_V01, &gate_statement),
        ];
        if let Some(st) = &sbom_statement {
            signed.push((sbom::MEDIA_TYPE, sbom::PREDICATE_TYPE, st));
        }
        for (artifact_type, predicate, st) in signed {
            if st.is_null() {
                continue;
            }
            let env = canonical_json(&lane_core::signing::envelope(
                &canonical_json(st)?.bytes,
                signer,
            ))?;
            let a = evidence::artifact(
                artifact_type,
                MEDIA_DSSE,
                env,
                image.manifest_digest.as_str(),
                p.manifest_size,
                &[(ANNOTATION_PREDICATE, predicate)],
            )?;
            match lane_core::store::attach(store, &spec.repository, &image.manifest_digest, &a) {
                Ok(d) => release.evidence.push(d),
                Err(e) => reject(&mut release, format!("attaching evidence failed: {e:#}")),
            }
            fault::point(fault::RELEASE_EVIDENCE_ATTACHED);
        }
    }
    let mut moved_at = Vec::new();
    if release.accepted {
        for tag in &spec.tags {
            progress.say(format_args!(
                "accept: tag {}:{tag} -> {}",
                spec.repository, image.manifest_digest
            ));
            let at = now_precise();
            match store.tag(&spec.repository, &image.manifest_digest, tag) {
                Ok(()) => {}
                // Moved, then moved again by another run before our
                // read-back: the final check below reports it.
                Err(e) if e.is::<lane_core::distribution::Overtaken>() => {
                    progress.say(format_args!("accept: {e}"));
                }
                Err(e) => {
                    reject(&mut release, format!("tagging {tag} failed: {e:#}"));
                    break;
                }
            }
            release.tagged.push(tag.clone());
            moved_at.push((at, now_precise()));
            fault::point(fault::RELEASE_TAG_MOVED);
        }
        fault::point(fault::RELEASE_TAGS_MOVED);
    }
    let record = record_json(&release, &gate_statement, facts)?;
    if let Some(p) = &published {
        let a = evidence::artifact(
            MEDIA_RELEASE_RECORD,
            MEDIA_RELEASE_RECORD,
            record.clone(),
            image.manifest_digest.as_str(),
            p.manifest_size,
            &[(ANNOTATION_PREDICATE, MEDIA_RELEASE_RECORD)],
        )?;
        if let Ok(d) = lane_core::store::attach(store, &spec.repository, &image.manifest_digest, &a)
        {
            release.evidence.push(d);
        }
    }
    // The final check of every moved tag: another run may have moved it
    // since (registries have no compare-and-swap). The local record says
    // what was found; the run fails when a tag was overtaken.
    for (tag, (moved_at, confirmed_at)) in release.tagged.clone().into_iter().zip(moved_at) {
        let checked_at = now_precise();
        let names = store.resolve_tag(&spec.repository, &tag)?;
        let held = names.as_ref() == Some(&image.manifest_digest);
        if !held {
            release.decision.failures.push(format!(
                "tag {}:{tag} was moved by another run after this one moved it: it names {} now, not {}; this digest stays released by digest, the tag is not this run's",
                spec.repository,
                names.as_ref().map_or("nothing".to_string(), Digest::to_string),
                image.manifest_digest
            ));
        }
        release.tag_checks.push(TagHeld {
            tag,
            moved_at,
            confirmed_at,
            checked_at,
            names,
            held,
        });
    }
    let local_record = record_json(&release, &gate_statement, facts)?;
    crate::adapters::cache::write_atomic(&record_path, &local_record.bytes)?;
    Ok(release)
}

fn reject(release: &mut ImageRelease, why: String) {
    release.accepted = false;
    release.decision.accepted = false;
    release.decision.failures.push(why);
}

fn record_json(release: &ImageRelease, gate_statement: &Value, facts: &Facts) -> Result<Blob> {
    canonical_json(&json!({
        "release": release,
        "gateStatement": gate_statement,
        "startedOn": facts.started_on,
        "finishedOn": now(),
    }))
}

fn source_state(git: &GitFacts) -> GateResult {
    GateResult::check(
        GateName::SourceState,
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

/// Whether the committed locks satisfy the image definitions on their own
/// (`cargo xtask lock --check`: every request locked, the locked set
/// closed, read from the verified artifacts; today's index is not asked):
/// `Ok(problems)`.
fn lock_freshness(ws: &Workspace, images: &[ImageSpec]) -> Result<Vec<String>> {
    if images
        .iter()
        .all(|i| i.debian.is_none() && i.python.is_none())
    {
        return Ok(Vec::new()); // nothing is locked
    }
    let cache = ws.root.join("target/lane-cache");
    let mut stale = match crate::adapters::apt::check(&ws.root, images, &cache) {
        Ok(report) => report.changes,
        Err(e) => vec![format!("{e:#}")],
    };
    match crate::adapters::pip::check(&ws.root, &cache, images) {
        Ok(report) => stale.extend(report.into_iter().flat_map(|r| r.changes)),
        Err(e) => stale.push(format!("{e:#}")),
    }
    Ok(stale)
}

fn pinned_inputs(
    spec: &ImageSpec,
    stale: &[String],
    lockfiles: &BTreeMap<String, Digest>,
) -> GateResult {
    // Tag-only bases cannot be parsed (spec::parse_base), so every base is
    // scratch, a workspace image or pinned by digest; the locks must be fresh.
    let base = spec.base.to_string();
    GateResult::check(
        GateName::PinnedInputs,
        stale.is_empty(),
        if stale.is_empty() {
            format!(
                "base {base}; {} lockfile(s), satisfied by their own pins",
                lockfiles.len()
            )
        } else {
            format!(
                "the locks do not satisfy the image definitions: {}; run cargo xtask lock and commit the result",
                stale.join("; ")
            )
        },
        json!({ "base": base, "lockfiles": lockfiles, "stale": stale }),
    )
}

/// `lockfiles/*` (and Cargo.lock) with their sha256, sorted by path.
pub fn lockfile_digests(ws: &Workspace) -> Result<BTreeMap<String, Digest>> {
    let mut out = BTreeMap::new();
    if let Ok(lock) = std::fs::read(ws.root.join("Cargo.lock")) {
        out.insert("Cargo.lock".to_string(), Digest::of(&lock));
    }
    let dir = ws.root.join("lockfiles");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let e = e?;
            if e.file_type()?.is_file() {
                let bytes = std::fs::read(e.path())?;
                out.insert(
                    format!("lockfiles/{}", e.file_name().to_string_lossy()),
                    Digest::of(&bytes),
                );
            }
        }
    }
    Ok(out)
}

fn reproducible(repro: &std::result::Result<ReproReport, String>, name: &str) -> GateResult {
    let gate = GateName::Reproducible;
    match repro {
        Err(e) => GateResult::failed(gate, format!("the second build failed: {e}"), Value::Null),
        Ok(r) => match r.images.iter().find(|i| i.name == name) {
            None => GateResult::failed(
                gate,
                "the second build did not produce this image",
                Value::Null,
            ),
            Some(i) => GateResult::check(
                gate,
                i.equal,
                i.difference
                    .clone()
                    .unwrap_or_else(|| format!("both builds gave {}", i.first)),
                serde_json::to_value(i).unwrap_or_default(),
            ),
        },
    }
}

/// `security-updates`: the security updates offered for the packages locked
/// into this image (its own and its workspace bases'), none offered for
/// longer than `days` (`lane_core::security_age`).
fn security_updates(
    ws: &Workspace,
    facts: &Facts,
    spec: &ImageSpec,
    updates: &std::result::Result<Vec<lane_core::security_age::SecurityUpdate>, String>,
    days: u32,
) -> GateResult {
    let gate = GateName::SecurityUpdates;
    let (updates, debs) = match (updates, image_debs(ws, &facts.all, spec)) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) => {
            return GateResult::failed(
                gate,
                format!("the security updates could not be read: {e}"),
                Value::Null,
            );
        }
        (_, Err(e)) => return GateResult::failed(gate, format!("{e:#}"), Value::Null),
    };
    let mine: Vec<_> = updates
        .iter()
        .filter(|u| debs.iter().any(|d| d.name == u.name))
        .cloned()
        .collect();
    lane_core::security_age::gate(&mine, chrono::Utc::now().timestamp(), days)
}

/// `authoritative-builder`: a CI identity the lane verified (OIDC token)
/// whose workflow the policy trusts. The evidence holds the verified
/// claims, never the token.
fn authoritative_builder(policy: &Policy, builder: &BuilderRun) -> GateResult {
    let verdict = match &builder.identity {
        None => Err(
            "a local run, not a verified CI workflow: release to a registry from CI, or omit --registry to release into the local store"
                .to_string(),
        ),
        Some(_) => lane_core::identity::trusted(&policy.trusted_builders, &builder.id)
            .map_err(|why| format!("a CI workflow the policy does not trust: {why}")),
    };
    GateResult::check(
        GateName::AuthoritativeBuilder,
        verdict.is_ok(),
        format!(
            "builder {} ({})",
            builder.id,
            match (&verdict, &builder.identity) {
                (Ok(()), Some(i)) => format!(
                    "a trusted CI workflow, identity verified with {} key {} of {}",
                    i.key.alg, i.key.kid, i.issuer
                ),
                (Err(why), _) => why.clone(),
                (Ok(()), None) => String::new(),
            }
        ),
        json!({
            "id": builder.id,
            "invocationId": builder.invocation_id,
            "version": builder.version,
            "identity": builder.identity.as_ref().map(|i| i.to_json()),
        }),
    )
}

/// `sbom-complete`: every package the image's dpkg database lists (the
/// drift manifest) is in the SBOM.
fn sbom_complete(sbom: &Result<Value>, curated: &[String]) -> GateResult {
    let gate = GateName::SbomComplete;
    match sbom {
        Err(e) => GateResult::failed(gate, format!("no SBOM: {e:#}"), Value::Null),
        Ok(doc) => {
            let missing = sbom::sbom_complete(doc, curated);
            let packages = doc["packages"].as_array().map_or(0, Vec::len);
            GateResult::check(
                gate,
                missing.is_empty(),
                if missing.is_empty() {
                    format!(
                        "{packages} SPDX packages; every one of the {} curated packages is listed",
                        curated.len()
                    )
                } else {
                    format!(
                        "the SBOM leaves out packages the image's dpkg database lists: {}",
                        missing.join(", ")
                    )
                },
                json!({ "missing": missing, "curated": curated, "packages": packages }),
            )
        }
    }
}

/// What the image checks found, for the gates and for the SBOM.
pub struct ImageChecks {
    results: Vec<GateResult>,
    /// Names of the packages in the image's dpkg database.
    curated: Vec<String>,
    /// Each workspace binary of the image's own layers, with its bytes' digests.
    binaries: Vec<(lane_core::spec::BinarySpec, PlacedFile)>,
}

impl ImageChecks {
    /// The image checks' results carried over from earlier evidence.
    fn carried(proof: &Proof) -> ImageChecks {
        ImageChecks {
            results: [
                GateName::NoDrift,
                GateName::NoUnusedPackages,
                GateName::NoSecrets,
                GateName::Smoke,
            ]
            .into_iter()
            .map(|g| proof.carried(g))
            .collect(),
            curated: Vec::new(),
            binaries: Vec::new(),
        }
    }
}

/// What the candidate digest already proved in the target store: a signed
/// gate statement of an accepted release under this policy and these gate
/// definitions (`lane_core::reuse`). `--no-reuse`, a digest the store does
/// not hold yet, and evidence that cannot be trusted: nothing.
fn earlier_proof(
    facts: &Facts,
    image: &BuiltImage,
    store: &mut dyn Store,
    no_reuse: bool,
    progress: &Reporter,
) -> Option<Proof> {
    if no_reuse {
        return None;
    }
    if let Some(p) = facts.held.get(&image.name) {
        return Some(p.clone());
    }
    let spec = facts.selected.iter().find(|s| s.name == image.name)?;
    proof_of(
        &facts.policy,
        &facts.policy_digest,
        spec,
        &image.manifest_digest,
        store,
        progress,
    )
}

/// The reusable proof `digest` carries in `store` for `spec`, if any
/// (said either way).
fn proof_of(
    policy: &Policy,
    policy_digest: &Digest,
    spec: &ImageSpec,
    digest: &Digest,
    store: &mut dyn Store,
    progress: &Reporter,
) -> Option<Proof> {
    let evidence = match lane_core::verify::fetch_evidence(store, &spec.repository, digest) {
        Ok(e) => e,
        Err(_) => return None, // not in the store yet: a first release
    };
    let definitions = reuse::definitions(spec, env!("CARGO_PKG_VERSION"));
    match reuse::find(
        digest,
        &evidence.envelopes,
        policy,
        policy_digest,
        &definitions,
    ) {
        Ok(p) => {
            progress.say(format_args!(
                "gates: {} carries {} over from gate statement {} (commit {})",
                spec.name,
                reuse::IMAGE_BOUND
                    .iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                p.reused.from,
                p.reused.revision
            ));
            Some(p)
        }
        Err(why) => {
            progress.say(format_args!(
                "gates: {} runs every gate (nothing to carry over: {})",
                spec.name,
                why.join("; ")
            ));
            None
        }
    }
}

/// Gates that look at the built image itself: drift (and unused packages)
/// over the merged file system, and the smoke commands in the engine.
fn image_gates(
    ws: &Workspace,
    spec: &ImageSpec,
    image: &BuiltImage,
    engine_error: Option<&String>,
    progress: &Reporter,
) -> ImageChecks {
    let mut out = ImageChecks {
        results: Vec::new(),
        curated: Vec::new(),
        binaries: Vec::new(),
    };
    progress.say(format_args!("gates: drift of {}", image.name));
    let drift = (|| -> Result<lane_core::drift::ImageDrift> {
        let index = crate::lane::drift::provider_index(ws, None)?;
        let mut analysed = crate::lane::drift::analyse_built(ws, &index, &[image], progress)?;
        let a = analysed
            .pop()
            .context("the drift analysis returned no image")?;
        out.curated = a.manifest.packages.iter().map(|p| p.name.clone()).collect();
        for b in spec.layers.iter().flat_map(|l| &l.binaries) {
            if let Some(bytes) = a.fs.read(b.dest.as_str()) {
                out.binaries
                    .push((b.clone(), PlacedFile::of(b.dest.as_str(), bytes)));
            }
        }
        Ok(a.drift)
    })();
    match drift {
        Ok(d) => {
            let report = lane_core::drift::DriftReport {
                images: vec![d.clone()],
            };
            let failures =
                lane_core::drift::failures(&report, &lane_core::drift::DriftPolicy::default());
            out.results.push(GateResult::check(
                GateName::NoDrift,
                failures.is_empty(),
                if failures.is_empty() {
                    format!(
                        "{} ELF objects, every library and interpreter resolves{}",
                        d.objects.len(),
                        d.python.as_ref().map_or(String::new(), |p| format!(
                            "; {} Python imports of {} files resolve inside the image",
                            p.imports.iter().filter(|i| i.status == "resolved").count(),
                            p.files.len()
                        ))
                    )
                } else {
                    failures.join("; ")
                },
                serde_json::to_value(&d).unwrap_or_default(),
            ));
            out.results.push(GateResult::check(
                GateName::NoUnusedPackages,
                d.unused_packages.is_empty(),
                if d.unused_packages.is_empty() {
                    "every curated package is needed".to_string()
                } else {
                    format!("unused: {}", d.unused_packages.join(", "))
                },
                json!({ "unused_packages": d.unused_packages }),
            ));
        }
        Err(e) => out.results.push(GateResult::failed(
            GateName::NoDrift,
            format!("the drift analysis failed: {e:#}"),
            Value::Null,
        )),
    }

    progress.say(format_args!(
        "gates: no secrets in the layers of {}",
        image.name
    ));
    out.results.push(crate::lane::no_secrets::gate(
        spec,
        image,
        &crate::lane::no_secrets::known_secrets(),
    ));

    progress.say(format_args!(
        "gates: smoke of {} in the Docker Engine",
        image.name
    ));
    let smoke = (|| -> Result<lane_core::smoke::SmokeReport> {
        if let Some(e) = engine_error {
            anyhow::bail!("{e}");
        }
        if spec.smoke.is_empty() && spec.python.is_none() {
            anyhow::bail!(
                "image {} declares no smoke command; add a [[smoke]] entry to {}/image.toml",
                spec.name,
                spec.dir
            );
        }
        let loaded = crate::adapters::layout::Layout::at(&image.name, &image.layout)
            .smoke_image(image.manifest_digest.as_str())?;
        let opts = crate::adapters::engine::SmokeOptions {
            quiet: true,
            user: spec.smoke_user.clone(),
            ..crate::adapters::engine::SmokeOptions::default()
        };
        let checks = crate::lane::drift::smoke_checks(ws, spec, &image.layout)?;
        crate::adapters::engine::smoke(&loaded, &checks, &opts)
    })();
    out.results.push(match smoke {
        Ok(r) => {
            let failed = r.checks.iter().filter(|c| !c.passed).count();
            GateResult::check(
                GateName::Smoke,
                failed == 0,
                if failed == 0 {
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
        Err(e) => GateResult::failed(GateName::Smoke, format!("{e:#}"), Value::Null),
    });
    out
}

/// The locked `.deb`s in the image: its own `[debian]` packages and those of
/// its workspace bases, base first.
fn image_debs(ws: &Workspace, all: &[ImageSpec], spec: &ImageSpec) -> Result<Vec<LockedPackage>> {
    let mut chain = vec![spec];
    let mut cur = spec;
    while let BaseRef::Workspace { image } = &cur.base {
        cur = all
            .iter()
            .find(|s| &s.name == image)
            .with_context(|| format!("image {}: base workspace://{image} not found", cur.name))?;
        if chain.iter().any(|s| s.name == cur.name) {
            bail!("image {}: its workspace bases form a cycle", spec.name);
        }
        chain.push(cur);
    }
    let mut out: Vec<LockedPackage> = Vec::new();
    for s in chain.iter().rev() {
        for p in crate::adapters::apt::locked_packages(&ws.root, s)? {
            if !out
                .iter()
                .any(|o| o.name == p.name && o.version == p.version)
            {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// The locked wheels in the image: its own `[python]` wheels and those of
/// its workspace bases.
fn image_wheels(
    root: &std::path::Path,
    all: &[ImageSpec],
    spec: &ImageSpec,
) -> Result<Vec<lane_core::python::lock::LockedWheel>> {
    let mut out: Vec<lane_core::python::lock::LockedWheel> = Vec::new();
    let mut cur = Some(spec);
    let mut seen = Vec::new();
    while let Some(s) = cur {
        if seen.contains(&s.name) {
            break;
        }
        seen.push(s.name.clone());
        for w in crate::adapters::pip::locked_wheels(root, s)? {
            if !out.iter().any(|o| o.filename == w.filename) {
                out.push(w);
            }
        }
        cur = match &s.base {
            BaseRef::Workspace { image } => all.iter().find(|x| &x.name == image),
            _ => None,
        };
    }
    Ok(out)
}

fn provenance_inputs(
    facts: &Facts,
    spec: &ImageSpec,
    image: &BuiltImage,
    subject: &Subject,
    debs: &[LockedPackage],
    wheels: &[lane_core::python::lock::LockedWheel],
) -> Result<ProvenanceInputs> {
    let mut inputs = vec![Input::Source {
        url: facts.source_url.clone(),
        commit: facts.git.revision.clone(),
    }];
    for (path, digest) in &facts.lockfiles {
        inputs.push(Input::File {
            path: path.clone(),
            sha256: digest.clone(),
        });
    }
    for p in debs {
        inputs.push(Input::Deb {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.architecture.clone(),
            distro: None,
            sha256: crate::adapters::apt::locked_digest(p)?,
        });
    }
    for w in wheels.iter().cloned() {
        inputs.push(Input::Wheel {
            sha256: crate::adapters::pip::locked_digest(&w)?,
            name: w.name,
            version: w.version,
        });
    }
    if let Some((repository, digest)) = base_of(image) {
        inputs.push(Input::BaseImage {
            repository,
            digest,
            tag: None,
        });
    }
    Ok(ProvenanceInputs {
        subject: subject.clone(),
        image: image.name.clone(),
        tags: spec.tags.iter().map(Tag::to_string).collect(),
        source_repository: facts.source_url.clone(),
        revision: facts.git.revision.clone(),
        tree_clean: !facts.git.dirty,
        policy_path: POLICY_PATH.into(),
        policy_digest: facts.policy_digest.clone(),
        rustc: facts.toolchain.rustc.clone(),
        lane_version: env!("CARGO_PKG_VERSION").into(),
        encoder: lane_core::layer::encoder_id(),
        secrets_allowed: spec.secrets_allow.iter().map(|p| p.to_string()).collect(),
        inputs,
        builder: facts.builder.clone(),
        started_on: facts.started_on.clone(),
        finished_on: now(),
    })
}

fn sbom_inputs(
    ws: &Workspace,
    facts: &Facts,
    spec: &ImageSpec,
    image: &BuiltImage,
    subject: &Subject,
    debs: &[LockedPackage],
    binaries: &[(lane_core::spec::BinarySpec, PlacedFile)],
) -> Result<SbomInputs> {
    let mut deb_packages = Vec::new();
    for p in debs {
        deb_packages.push(DebPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.architecture.clone(),
            sha256: crate::adapters::apt::locked_digest(p)?,
            license: None,
        });
    }
    let mut bins = Vec::new();
    for (b, file) in binaries {
        let crates = crate::adapters::cargo_deps::compiled_crates(
            &ws.root,
            &crate::adapters::cargo_deps::BinarySpec {
                package: b.package.clone(),
                bin: b.bin.clone(),
                features: Vec::new(),
                default_features: true,
                target: facts.toolchain.triple.clone(),
            },
        )?;
        bins.push(Binary {
            file: file.clone(),
            package: b.package.clone(),
            crates,
        });
    }
    Ok(SbomInputs {
        image: spec.name.clone(),
        config_digest: image.config_digest.clone(),
        manifest: Some((subject.name.clone(), image.manifest_digest.clone())),
        source_url: facts.source_url.clone(),
        source_commit: facts.git.revision.clone(),
        source_date_epoch: facts.git.commit_time,
        lane_version: env!("CARGO_PKG_VERSION").into(),
        debs: deb_packages,
        binaries: bins,
        python: image_wheels(&ws.root, &facts.all, spec)?
            .into_iter()
            .map(|w| {
                Ok(lane_core::sbom::PythonDist {
                    sha256: crate::adapters::pip::locked_digest(&w)?,
                    name: w.name,
                    version: w.version,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        files: Vec::new(),
    })
}

/// The base name and digest recorded in the image's manifest annotations.
fn base_of(image: &BuiltImage) -> Option<(String, Digest)> {
    let (_, manifest) = crate::adapters::layout::Layout::at(&image.name, &image.layout)
        .manifest()
        .ok()?;
    let ann = &manifest["annotations"];
    Some((
        ann[lane_core::oci::ANNOTATION_BASE_NAME]
            .as_str()?
            .to_string(),
        ann[lane_core::oci::ANNOTATION_BASE_DIGEST]
            .as_str()?
            .parse()
            .ok()?,
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
                format!(
                    "ACCEPTED, tagged {}",
                    i.tagged
                        .iter()
                        .map(Tag::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                "REJECTED, no tag moved".into()
            }
        ));
        for t in i.tag_checks.iter().filter(|t| !t.held) {
            out.push_str(&format!(
                "  OVERTAKEN: tag {} names {} now (another run moved it after this one)\n",
                t.tag,
                t.names
                    .as_ref()
                    .map_or("nothing".to_string(), Digest::to_string)
            ));
        }
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
        for f in i.decision.failures.iter().filter(|f| {
            !i.decision
                .gates
                .iter()
                .any(|g| f.starts_with(g.gate.as_str()))
        }) {
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
