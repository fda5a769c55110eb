//! The Docker Engine adapter (bollard). The only async code of the lane:
//! each entry point ([`probe`], [`smoke`]) builds a current-thread tokio
//! runtime, runs, and returns plain values; the rest of the crate stays sync.
//!
//! Invariants:
//! - the engine is reached through `DOCKER_HOST`, else the local socket; an
//!   unreachable engine is an error that names the address, never a skip;
//! - every bollard stream is drained and a mid-stream error is a failure;
//! - containers are created from the image ID the engine reported after the
//!   load (checked against our digest), never from a tag;
//! - every container and the temporary tag are removed afterwards, also on
//!   error, on panic and on SIGINT/SIGTERM.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ImportImageOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions,
};
use futures_util::StreamExt;

use crate::adapters::layout::LayoutImage;
use crate::report::Reporter;
use lane_core::id::Digest;
use lane_core::layer::sha256;
use lane_core::oci;
use lane_core::smoke::{
    self, CheckReport, EngineFacts, ImageStore, Isolation, Outcome, SmokeReport,
};
use lane_core::spec::SmokeSpec;

/// Where the engine listens when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// The label every smoke container carries, with the run id as value.
pub const RUN_LABEL: &str = "lane.smoke.run";

/// Output kept in memory per container (the tail); the stream is still
/// drained to the end.
const OUTPUT_CAP: usize = 1 << 20;

/// The address the engine is reached at: `DOCKER_HOST`, else the default socket.
pub fn address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

fn unreachable(address: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "Docker Engine not reachable at {address}: {e}; start the engine or point DOCKER_HOST at it (the smoke check is required, it is never skipped)"
    )
}

/// Runs one future on a fresh current-thread runtime.
fn block_on<F: Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime for the Docker Engine client")?;
    Ok(rt.block_on(f))
}

struct Connected {
    docker: Docker,
    facts: EngineFacts,
}

async fn connect() -> Result<Connected> {
    let address = address();
    let docker = Docker::connect_with_host(&address).map_err(|e| unreachable(&address, e))?;
    // The engine may speak an older API (20.10: 1.41) than bollard's default.
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable(&address, e))?;
    let version = docker
        .version()
        .await
        .map_err(|e| unreachable(&address, e))?;
    let info = docker
        .info()
        .await
        .with_context(|| format!("asking the Docker Engine at {address} for its info"))?;
    let store = ImageStore::from_driver_status(info.driver_status.as_deref().unwrap_or(&[]));
    Ok(Connected {
        docker,
        facts: EngineFacts {
            address,
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            store,
        },
    })
}

/// Checks that the engine answers; returns its facts.
pub fn probe() -> Result<EngineFacts> {
    block_on(async { connect().await.map(|c| c.facts) })?
}

// ---------------------------------------------------------------------------
// Cleanup: what this run created, removed whatever happens.

#[derive(Default)]
struct Created {
    containers: Vec<String>,
    tag: Option<String>,
}

type Tracked = Arc<Mutex<Created>>;

async fn cleanup(docker: &Docker, tracked: &Tracked, keep_image: bool) -> Vec<String> {
    let (containers, tag) = {
        let mut t = tracked.lock().unwrap_or_else(|p| p.into_inner());
        (
            std::mem::take(&mut t.containers),
            t.tag.take().filter(|_| !keep_image),
        )
    };
    let mut errors = Vec::new();
    for id in containers {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match docker.remove_container(&id, Some(opts)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => errors.push(format!("removing container {id}: {e}")),
        }
    }
    if let Some(tag) = tag {
        // Removing the tag deletes the image only when no other tag and no
        // container refers to it: a parallel run of the same image keeps it.
        let opts = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        match docker.remove_image(&tag, Some(opts), None).await {
            Ok(_)
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => errors.push(format!("removing image tag {tag}: {e}")),
        }
    }
    errors
}

/// Removes what is still tracked when dropped (after a panic unwound out of
/// the runtime); a normal run has already cleaned up and this does nothing.
struct Guard {
    tracked: Tracked,
    reporter: Reporter,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let empty = {
            let t = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
            t.containers.is_empty() && t.tag.is_none()
        };
        if empty {
            return;
        }
        let tracked = self.tracked.clone();
        let reporter = self.reporter;
        let _ = block_on(async move {
            if let Ok(c) = connect().await {
                for e in cleanup(&c.docker, &tracked, false).await {
                    reporter.warn(e);
                }
            }
        });
    }
}

// SIGINT/SIGTERM while a smoke run is in progress: set a flag the run
// watches, so it stops and cleans up instead of dying with containers left.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct SignalHandlers(Vec<(libc::c_int, libc::sighandler_t)>);

impl SignalHandlers {
    fn install() -> SignalHandlers {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let mut old = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic (async-signal-safe).
            let prev = unsafe { libc::signal(sig, handler) };
            old.push((sig, prev));
        }
        SignalHandlers(old)
    }
}

impl Drop for SignalHandlers {
    fn drop(&mut self) {
        for &(sig, prev) in &self.0 {
            // SAFETY: restores the handler that was installed before.
            unsafe { libc::signal(sig, prev) };
        }
    }
}

async fn interrupted() {
    while !INTERRUPTED.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------

/// Loads `image` into the engine, runs every smoke command in its own
/// hardened container and returns the report. Errors are for what prevents
/// the check from running (no engine, load failure, identity mismatch);
/// failing commands are in the report (see [`smoke::check`]).
pub fn smoke(
    image: &LayoutImage,
    checks: &[SmokeSpec],
    opts: &SmokeOptions,
) -> Result<SmokeReport> {
    let tracked: Tracked = Arc::default();
    let _guard = Guard {
        tracked: tracked.clone(),
        reporter: Reporter::new(opts.quiet),
    };
    let _signals = SignalHandlers::install();
    block_on(async {
        let c = connect().await?;
        let run_id = run_id();
        let work = run(&c, image, checks, opts, &run_id, &tracked);
        let result = tokio::select! {
            r = work => r,
            () = interrupted() => Err(anyhow!("smoke check interrupted (SIGINT/SIGTERM)")),
        };
        // The tag is kept on request only when there is a report naming it.
        let keep_image = opts.keep_image && result.is_ok();
        let errors = cleanup(&c.docker, &tracked, keep_image).await;
        if errors.is_empty() {
            return result;
        }
        let cleanup_failed = format!(
            "cleaning up after the smoke check at {} failed ({}); remove them with `docker rm -f` / `docker rmi`",
            c.facts.address,
            errors.join("; ")
        );
        match result {
            Ok(_) => Err(anyhow!(cleanup_failed)),
            Err(e) => Err(e.context(cleanup_failed)),
        }
    })?
}

async fn run(
    c: &Connected,
    image: &LayoutImage,
    checks: &[SmokeSpec],
    opts: &SmokeOptions,
    run_id: &str,
    tracked: &Tracked,
) -> Result<SmokeReport> {
    let progress = Reporter { quiet: opts.quiet };
    let docker = &c.docker;
    let expected =
        smoke::expected_image_id(c.facts.store, &image.config_digest, &image.manifest_digest);
    let preexisting = docker.inspect_image(&expected).await.is_ok();
    let tag = format!("lane-smoke/{}:{run_id}", image.name);
    progress.say(format_args!(
        "smoke: loading {} {} into the Docker Engine {} at {}",
        image.name, image.manifest_digest, c.facts.version, c.facts.address
    ));
    tracked.lock().unwrap_or_else(|p| p.into_inner()).tag = Some(tag.clone());
    load(docker, image, &tag).await?;

    let inspect = docker
        .inspect_image(&tag)
        .await
        .with_context(|| format!("inspecting the loaded image {tag}"))?;
    let image_id = inspect.id.unwrap_or_default();
    smoke::check_identity(
        c.facts.store,
        &image_id,
        &image.config_digest,
        &image.manifest_digest,
    )?;

    let mut reports: Vec<CheckReport> = Vec::new();
    for (i, spec) in checks.iter().enumerate() {
        // Long arguments (the smoke-import's script) are shortened here only.
        let shown: Vec<String> = spec
            .command
            .iter()
            .map(|a| match a.char_indices().nth(60) {
                Some((i, _)) => format!("{}...", &a[..i]),
                None => a.clone(),
            })
            .collect();
        progress.say(format_args!("smoke: {} {:?}", spec.name, shown));
        let outcome =
            run_container(docker, image, &image_id, spec, opts, run_id, i, tracked).await?;
        let report = smoke::evaluate(spec, &outcome);
        progress.say(format_args!(
            "smoke: {} {} (exit {}, {} ms)",
            spec.name,
            if report.passed { "passed" } else { "FAILED" },
            report
                .exit_code
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            report.duration_ms
        ));
        reports.push(report);
    }
    let passed = reports.iter().all(|r| r.passed);
    Ok(SmokeReport {
        image: image.name.clone(),
        manifest_digest: image.manifest_digest.clone(),
        config_digest: image.config_digest.clone(),
        image_id,
        engine: c.facts.clone(),
        run_id: run_id.to_string(),
        loaded_tag: tag,
        preexisting,
        checks: reports,
        passed,
    })
}

/// Streams the layout plus a docker-archive `manifest.json` to
/// `POST /images/load` and drains the response.
async fn load(docker: &Docker, image: &LayoutImage, tag: &str) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(4);
    let producer = {
        let image = image.clone();
        let tag = tag.to_string();
        std::thread::spawn(move || -> Result<()> {
            let writer = ChannelWriter { tx: tx.clone() };
            let result = write_archive(
                &image,
                &tag,
                io::BufWriter::with_capacity(256 << 10, writer),
            );
            if let Err(e) = &result {
                let _ = tx.blocking_send(Err(io::Error::other(format!("{e:#}"))));
            }
            result
        })
    };
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let opts = ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut stream = docker.import_image(opts, bollard::body_try_stream(body), None);
    let mut loaded = Vec::new();
    let mut stream_error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => loaded.extend(info.stream),
            Err(e) => {
                stream_error.get_or_insert(e);
            }
        }
    }
    // The request body (the channel's receiver) goes with the stream, so a
    // writer blocked on an engine that stopped reading is released.
    drop(stream);
    let produced = producer
        .join()
        .map_err(|_| anyhow!("the archive writer thread panicked"))?;
    produced
        .with_context(|| format!("streaming the layout {} to the engine", image.dir.display()))?;
    if let Some(e) = stream_error {
        bail!(
            "the Docker Engine failed to load {} from {}: {e}",
            image.name,
            image.dir.display()
        );
    }
    let said = loaded.concat();
    if !said.contains(tag) {
        bail!(
            "the Docker Engine did not report loading {tag} (it said {:?})",
            said.trim()
        );
    }
    Ok(())
}

/// The tar sent to the engine: the OCI layout's own files and the blobs of
/// this image, plus `manifest.json` for engines without OCI-layout support.
fn write_archive(image: &LayoutImage, tag: &str, out: impl Write) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut add = |path: &str, size: u64, data: &mut dyn io::Read| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data)
            .with_context(|| format!("adding {path} to the archive"))
    };
    for rel in ["oci-layout", "index.json"] {
        let bytes = std::fs::read(image.dir.join(rel))
            .with_context(|| format!("reading {}", image.dir.join(rel).display()))?;
        add(rel, bytes.len() as u64, &mut bytes.as_slice())?;
    }
    // Our own manifest.json (not the layout's): it names the run's tag.
    let layers = image
        .layers
        .iter()
        .map(|l| l.parse())
        .collect::<Result<Vec<Digest>, _>>()?;
    let manifest =
        oci::docker_manifest(&image.config_digest.parse()?, &layers, &[tag.to_string()])?;
    add(
        oci::DOCKER_MANIFEST,
        manifest.size(),
        &mut manifest.bytes.as_slice(),
    )?;
    for rel in &image.blobs {
        let path = image.dir.join(rel);
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let size = f.metadata()?.len();
        add(rel, size, &mut f)?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Sends written bytes to the request body, waiting when the engine reads
/// slower than we write (bounded channel).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the engine stopped reading the archive",
                )
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_container(
    docker: &Docker,
    image: &LayoutImage,
    image_id: &str,
    spec: &SmokeSpec,
    opts: &SmokeOptions,
    run_id: &str,
    index: usize,
    tracked: &Tracked,
) -> Result<Outcome> {
    let labels = HashMap::from([
        (RUN_LABEL.to_string(), run_id.to_string()),
        ("lane.smoke.image".to_string(), image.name.clone()),
        ("lane.smoke.check".to_string(), spec.name.clone()),
    ]);
    let Some((program, args)) = spec.command.split_first() else {
        bail!(
            "smoke command {:?} is empty; give the program and its arguments",
            spec.name
        );
    };
    let body = ContainerCreateBody {
        image: Some(image_id.to_string()),
        entrypoint: Some(vec![program.clone()]),
        cmd: Some(args.to_vec()),
        // image.toml's smoke_user, else the image's own user, else nobody:
        // a smoke check runs as root only when image.toml says so.
        user: Some(match &opts.user {
            // Numeric: an image without /etc/passwd has no name to look up.
            Some(u) if u == "root" => "0:0".to_string(),
            Some(u) => u.clone(),
            None if !image.user.is_empty() => image.user.clone(),
            None => SMOKE_DEFAULT_USER.to_string(),
        }),
        labels: Some(labels),
        tty: Some(false),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        host_config: Some(HostConfig {
            network_mode: Some(opts.network_mode.clone()),
            readonly_rootfs: Some(true),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            cap_drop: Some(vec!["ALL".to_string()]),
            memory: Some(opts.memory_bytes),
            memory_swap: Some(opts.memory_bytes),
            pids_limit: Some(opts.pids_limit),
            nano_cpus: Some(opts.nano_cpus),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), SMOKE_LOG_MAX_SIZE.to_string()),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("lane-smoke-{run_id}-{index}");
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .with_context(|| format!("creating the smoke container {name} from image {image_id}"))?;
    let id = created.id;
    tracked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .containers
        .push(id.clone());
    let mut outcome = Outcome {
        warnings: created.warnings,
        ..Outcome::default()
    };

    let started = Instant::now();
    match docker.start_container(&id, None).await {
        Ok(()) => {
            let limit = Duration::from_secs(spec.timeout_secs);
            match tokio::time::timeout(limit, wait(docker, &id)).await {
                Ok(r) => r?,
                Err(_) => {
                    outcome.timed_out = true;
                    let kill = KillContainerOptions {
                        signal: "SIGKILL".into(),
                    };
                    match docker.kill_container(&id, Some(kill)).await {
                        // 409: it exited on its own in the meantime.
                        Ok(())
                        | Err(BollardError::DockerResponseServerError {
                            status_code: 409, ..
                        }) => {}
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("killing the smoke container {name} at its timeout")
                            });
                        }
                    }
                    tokio::time::timeout(Duration::from_secs(30), wait(docker, &id))
                        .await
                        .map_err(|_| {
                            anyhow!("the smoke container {name} did not stop after SIGKILL")
                        })??;
                }
            }
        }
        Err(BollardError::DockerResponseServerError { message, .. }) => {
            outcome.start_error = Some(message);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("starting the smoke container {name}"));
        }
    }
    outcome.duration_ms = started.elapsed().as_millis() as u64;

    let inspect = docker
        .inspect_container(&id, None)
        .await
        .with_context(|| format!("inspecting the smoke container {name}"))?;
    if let Some(state) = &inspect.state {
        if outcome.start_error.is_none() {
            outcome.exit_code = state.exit_code;
        }
        outcome.oom_killed = state.oom_killed.unwrap_or(false);
    }
    let hc = inspect.host_config.unwrap_or_default();
    outcome.isolation = Isolation {
        network_mode: hc.network_mode.unwrap_or_default(),
        readonly_rootfs: hc.readonly_rootfs.unwrap_or(false),
        security_opt: hc.security_opt.unwrap_or_default(),
        cap_drop: hc.cap_drop.unwrap_or_default(),
        memory_bytes: hc.memory.unwrap_or(0),
        pids_limit: hc.pids_limit.unwrap_or(0),
        nano_cpus: hc.nano_cpus.unwrap_or(0),
        log_max_size: hc
            .log_config
            .and_then(|l| l.config)
            .and_then(|c| c.get("max-size").cloned())
            .unwrap_or_default(),
        user: inspect.config.and_then(|c| c.user).unwrap_or_default(),
    };
    outcome.output = logs(docker, &id)
        .await
        .with_context(|| format!("reading the logs of the smoke container {name}"))?;
    Ok(outcome)
}

/// Drains `POST /containers/{id}/wait`. A non-zero exit is not an error here
/// (bollard reports it as one); the exit code is read by inspecting.
async fn wait(docker: &Docker, id: &str) -> Result<()> {
    let mut stream = docker.wait_container(id, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) | Err(BollardError::DockerContainerWaitError { .. }) => {}
            Err(e) => return Err(e).context("waiting for the smoke container"),
        }
    }
    Ok(())
}

/// stdout and stderr of a finished container, drained to the end; keeps the
/// last [`OUTPUT_CAP`] bytes.
async fn logs(docker: &Docker, id: &str) -> Result<String> {
    let opts = LogsOptions {
        stdout: true,
        stderr: true,
        follow: false,
        ..Default::default()
    };
    let mut stream = docker.logs(id, Some(opts));
    let mut out: Vec<u8> = Vec::new();
    while let Some(item) = stream.next().await {
        let chunk = item?;
        out.extend_from_slice(chunk.as_ref());
        if out.len() > 2 * OUTPUT_CAP {
            out.drain(..out.len() - OUTPUT_CAP);
        }
    }
    if out.len() > OUTPUT_CAP {
        out.drain(..out.len() - OUTPUT_CAP);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Who a smoke command runs as when neither image.toml (`smoke_user`) nor
/// the image's config names a user: nobody.
pub const SMOKE_DEFAULT_USER: &str = "65534:65534";
/// The engine keeps at most this much of a smoke container's log.
pub const SMOKE_LOG_MAX_SIZE: &str = "1m";

/// How the smoke containers are isolated. The lane always uses
/// [`SmokeOptions::default`]; the network can be switched on only through
/// the library (tests use it as a control run) — the CLI has no such flag.
#[derive(Debug, Clone)]
pub struct SmokeOptions {
    /// Docker network mode: `none` in the lane.
    pub network_mode: String,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    /// CPU time, in billionths of a CPU (1 CPU in the lane).
    pub nano_cpus: i64,
    /// Who the commands run as: image.toml's `smoke_user`; `None` takes
    /// the image's own user, else [`SMOKE_DEFAULT_USER`].
    pub user: Option<String>,
    /// Leave the loaded image tagged (`lane-smoke/NAME:RUN`) after the run,
    /// for inspection; containers are removed regardless.
    pub keep_image: bool,
    /// No progress output.
    pub quiet: bool,
}

impl Default for SmokeOptions {
    fn default() -> SmokeOptions {
        SmokeOptions {
            network_mode: "none".into(),
            memory_bytes: 256 << 20,
            pids_limit: 128,
            nano_cpus: 1_000_000_000,
            user: None,
            keep_image: false,
            quiet: false,
        }
    }
}

/// A short unique id for one run (pid, time, a counter), 12 hex digits.
pub fn run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seed = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    sha256(seed.as_bytes()).short().to_string()
}
