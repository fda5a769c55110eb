//! `cargo xtask`: the release lane's command line. Thin: parse flags, find
//! the workspace, dispatch to one module per command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use lane_core::drift::DriftPolicy;
use lane_core::store::Store;
use xtask::adapters::engine::SmokeOptions;
use xtask::adapters::local_store::LocalStore;
use xtask::adapters::registry::RegistryTarget;
use xtask::adapters::registry_store::RegistryStore;
use xtask::adapters::workspace::Workspace;
use xtask::commands::build::{self, BuildOptions};
use xtask::commands::drift;
use xtask::commands::publish::{self, PublishOptions};
use xtask::commands::release::{self, ReleaseOptions};
use xtask::commands::repro;
use xtask::commands::smoke;
use xtask::commands::{audit, promote, verify};

/// The auditable container release lane.
///
/// Builds container images hermetically from images/*/image.toml into OCI
/// image layouts under target/images/, with the same digest on any machine
/// and in any directory.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    propagate_version = true
)]
struct Cli {
    /// The workspace root (default: the nearest folder above the current one
    /// with Cargo.toml and images/).
    #[arg(long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where verify, promote and audit read, and which builders they accept.
#[derive(clap::Args)]
struct ReadArgs {
    /// HOST[:PORT][/PREFIX] of the registry to read (default:
    /// $LANE_REGISTRY, else the local store under target/).
    #[arg(long, value_name = "REGISTRY")]
    registry: Option<RegistryTarget>,
    /// Accept evidence from a local (non-CI) run. Only for the local
    /// store: a local builder is never trusted for a registry.
    #[arg(long)]
    allow_local_builder: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Build images into OCI image layouts under target/images/<IMAGE>/.
    ///
    /// Rust payloads are built with `cargo build --locked --release` in a
    /// cleared environment; layers are deterministic tar+gzip, cached by
    /// their inputs in target/lane-cache/. Prints each image's manifest digest.
    Build {
        /// Images to build (default: all); their workspace bases are built too.
        images: Vec<String>,
        /// Print {"images":[{name, manifest_digest, config_digest, layout, layers}]}.
        #[arg(long)]
        json: bool,
        /// Print the plan (images, layers, every entry, binaries) and build nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The release lane: preflight, build, gates, publish by digest, provenance,
    /// then accept (move the tags) or reject (move nothing).
    ///
    /// Every gate is required: source-state, pinned-inputs, reproducible,
    /// no-drift, smoke, publish-cross-check, provenance-complete, plus what
    /// ci/release-policy.toml adds. A gate that fails or does not run rejects
    /// the release. Without --registry the release goes to the embedded local
    /// store under target/local-registry/. Exits 0 only when every image is
    /// accepted. The release record is written to target/releases/.
    Release {
        /// Images to release (default: all).
        images: Vec<String>,
        /// HOST[:PORT][/PREFIX] of the registry to release to (default:
        /// $LANE_REGISTRY, else the local store under target/). A registry
        /// release needs an authoritative (CI) builder.
        #[arg(long, value_name = "REGISTRY")]
        registry: Option<RegistryTarget>,
        /// Print the release report as JSON.
        #[arg(long)]
        json: bool,
        /// PKCS#8 PEM ECDSA P-256 key that signs the evidence (default:
        /// the file named by $LANE_SIGNING_KEY_FILE, else the PEM in
        /// $LANE_SIGNING_KEY). Without a key the evidence is unsigned and
        /// `cargo xtask verify` refuses it.
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
    },
    /// Make an ECDSA P-256 key pair for signing release evidence.
    ///
    /// Writes release-signing.key (PKCS#8 PEM, mode 0600: keep it in the CI
    /// secret store as LANE_SIGNING_KEY, never in the repository) and
    /// release-signing.pub (SPKI PEM: add it to [signing] trusted_keys in
    /// ci/release-policy.toml). Never overwrites an existing key.
    Keygen {
        /// Where to write the two files.
        #[arg(long, value_name = "DIR", default_value = "target/keys")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check that a digest is an accepted release of the lane.
    ///
    /// Reads the evidence attached to the digest (referrers of the digest),
    /// and checks: every envelope is signed by a key in [signing]
    /// trusted_keys of ci/release-policy.toml; every statement's subject is
    /// exactly this digest; predicate types are SLSA provenance v1 and
    /// in-toto test-result v0.1 and nothing else; the builder is trusted;
    /// every required gate passed. Exits 0 only when all hold, and lists
    /// every reason otherwise. Needs a digest: REPO@sha256:<hex>.
    Verify {
        /// REPO@sha256:<hex>, REPO as in image.toml `repository`.
        reference: String,
        #[command(flatten)]
        read: ReadArgs,
        #[arg(long)]
        json: bool,
    },
    /// Point a tag at a verified digest, without re-building.
    ///
    /// Verifies REPO@sha256:<hex> first and refuses if it does not verify.
    /// With --to, copies the image, its blobs and its evidence to
    /// OTHER_REPO by digest and verifies it there. Then moves TAG and reads
    /// it back: it must resolve to exactly that digest. Refuses tag-only
    /// references.
    Promote {
        /// REPO@sha256:<hex>.
        reference: String,
        /// The tag to point at the digest.
        #[arg(long)]
        tag: String,
        /// Promote into another repository (copy by digest).
        #[arg(long, value_name = "OTHER_REPO")]
        to: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
        #[arg(long)]
        json: bool,
    },
    /// Answer, for one digest or tag: what was built, from which source, by
    /// which lane, which tags point at it, which gates ran, does it verify.
    ///
    /// Given REPO:TAG, first says which digest the tag resolves to now, so a
    /// tag moved behind the lane's back shows up (with its evidence, or its
    /// lack of evidence). Exits 0 when the audit could be made, whatever it
    /// finds; use `verify` to gate on the answer.
    Audit {
        /// REPO@sha256:<hex> or REPO:TAG.
        reference: String,
        #[command(flatten)]
        read: ReadArgs,
        #[arg(long)]
        json: bool,
    },
    /// Measure the lane side by side with reference tools (see BENCHMARKS.md).
    ///
    /// Generates its own inputs under target/bench/ (about 200 MB; 20 MB with
    /// --quick) and reports, per case, the lane's figure, the reference's and
    /// their ratio (min/median/max over 3 runs; 1 with --quick).
    Bench {
        /// Small inputs and one run: a smoke check of the harness.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// Encode one layer from a directory or file (used by `bench` in a child process).
    #[command(hide = true)]
    BenchLayer { input: PathBuf, out: PathBuf },
    /// Python import analysis of a source tree inside pyhello's layout (used by `bench`).
    #[command(hide = true)]
    BenchImports { layout: PathBuf, app: PathBuf },
    /// Check that the build is reproducible: build twice and compare digests.
    ///
    /// The second build runs from a copy of the source tree at another path,
    /// under umask 077, with shuffled mtimes, with empty caches. Exits non-zero
    /// and names the image, layer and first differing file on a mismatch.
    Repro {
        /// Images to check (default: all).
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build images and publish them by digest, cross-checked, then tag them.
    ///
    /// Preflight first, before anything is built: the registry is reachable,
    /// credentials are present and accepted, and push is allowed on every
    /// target repository (an upload session is opened and cancelled).
    /// Then each image's blobs the registry lacks are uploaded (HEAD first),
    /// the manifest's exact bytes are pushed by digest and read back: the
    /// reported Docker-Content-Digest, the hash of the fetched bytes and every
    /// blob's size must match, or the publish fails and no tag moves. Only
    /// then is each tag applied and read back.
    ///
    /// Credentials: LANE_REGISTRY_USER and LANE_REGISTRY_PASSWORD, else
    /// Docker's config.json ($DOCKER_CONFIG or ~/.docker: auths, credHelpers,
    /// credsStore). Plain HTTP for loopback registries only.
    ///
    /// With no registry (no --registry, no LANE_REGISTRY), images go into the
    /// local OCI image layout store target/local-registry/<repository>/.
    Publish {
        /// Images to publish (default: all); their workspace bases are published too.
        images: Vec<String>,
        /// HOST[:PORT][/PREFIX], e.g. 127.0.0.1:5000 or registry.example.com/team
        /// (default: $LANE_REGISTRY, else the local store).
        #[arg(long, value_name = "REGISTRY")]
        registry: Option<RegistryTarget>,
        /// Apply this tag instead of the tags in image.toml.
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// Print {destination, images:[{image, registry, repository, reference,
        /// digest, tags, blobs:{uploaded, skipped, mounted, bytes_uploaded}, cross_check}]}.
        #[arg(long)]
        json: bool,
    },
    /// Run the image's smoke commands in the Docker Engine, before publishing.
    ///
    /// Builds IMAGE, loads that exact OCI layout into the engine (DOCKER_HOST,
    /// else unix:///var/run/docker.sock), checks that the engine's image ID is
    /// our digest, then runs every [[smoke]] entry of images/IMAGE/image.toml
    /// in its own container created from the image ID: no network, read-only
    /// root file system, no new privileges, all capabilities dropped, 256 MiB
    /// memory, 128 pids, the image's user. Each command must exit with
    /// expect_exit within timeout_secs and its output must match
    /// expect_output. Containers and the temporary tag lane-smoke/IMAGE:RUN
    /// are removed afterwards. Exits non-zero on any failure, including an
    /// unreachable engine: the check is never skipped.
    ///
    /// Example image.toml entry:
    ///
    ///   [[smoke]]
    ///   name = "version"
    ///   command = ["/usr/local/bin/hello", "--version"]
    ///   expect_exit = 0
    ///   expect_output = "^hello 0\\.1"
    ///   timeout_secs = 30
    #[command(verbatim_doc_comment)]
    Smoke {
        /// The image to check (a folder under images/).
        image: String,
        /// Print the smoke report as JSON: image, image_id, engine, checks
        /// (command, exit_code, duration_ms, passed, failures, output).
        #[arg(long)]
        json: bool,
        /// Keep the loaded image tagged lane-smoke/IMAGE:RUN afterwards, to
        /// inspect it (`docker image inspect`); remove it with `docker rmi`.
        #[arg(long)]
        keep_image: bool,
    },
    /// Check each image's curated packages against what its binaries load.
    ///
    /// Builds the images, merges their layers (whiteouts applied) and, for
    /// every ELF executable and shared library, checks that the program
    /// interpreter exists and that each DT_NEEDED library resolves inside the
    /// image, transitively, as glibc's loader would: DT_RPATH (without
    /// DT_RUNPATH), LD_LIBRARY_PATH of the image config, DT_RUNPATH,
    /// /etc/ld.so.conf(.d), then /lib/<multiarch>, /usr/lib/<multiarch>,
    /// /lib, /usr/lib. The host is never consulted.
    ///
    /// The curated packages come from the image's /var/lib/dpkg/status.d/
    /// (PKG stanza + PKG.list file list); lockfiles/library-index.toml names
    /// the package that would provide a missing library. Exits non-zero when
    /// a library or interpreter is missing, and with --fail-on-unused when a
    /// curated package is needed by nothing. See docs/drift.md.
    Drift {
        /// Images to check (default: all).
        images: Vec<String>,
        /// Print the report as JSON: {"images":[{image, ok, objects,
        /// missing_libraries, missing_interpreters, malformed, packages,
        /// unused_packages}]}.
        #[arg(long)]
        json: bool,
        /// Fail when a curated package is needed by no binary.
        #[arg(long)]
        fail_on_unused: bool,
        /// A package that may be unused under --fail-on-unused (repeatable).
        #[arg(long, value_name = "PACKAGE")]
        allow_unused: Vec<String>,
        /// Provider index (default: lockfiles/library-index.toml, if present).
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
    },
    /// Pin the Debian packages of every image's [debian] table.
    ///
    /// Resolves the listed packages to their Depends + Pre-Depends closure
    /// from the machine's apt index (run apt-get update first) and writes
    /// lockfiles/debian.lock: name, version, architecture, archive path,
    /// size, sha256 and which requested package pulled each one in. The
    /// mirror is never recorded: builds fetch through the machine's apt and
    /// verify every .deb against the lock. See docs/debian.md.
    Lock {
        /// Write nothing; fail, naming every difference, when the lock does
        /// not match the image definitions and the apt index.
        #[arg(long)]
        check: bool,
        /// Print {"path", "packages", "changes", "written"}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The store to read: `--registry`, else $LANE_REGISTRY, else the embedded
/// local store under target/local-registry/.
fn open_store(
    ws: &Workspace,
    registry: Option<RegistryTarget>,
    quiet: bool,
) -> Result<Box<dyn Store>> {
    let registry = match registry {
        Some(r) => Some(r),
        None => publish::registry_from_env()?,
    };
    Ok(match registry {
        Some(target) => Box::new(RegistryStore::new(target, quiet)),
        None => Box::new(LocalStore::new(ws.root.join("target/local-registry"))),
    })
}

/// The registry a reference names (`HOST[:PORT]/REPO@...`) must agree with
/// `--registry` when both are given; `local/REPO@...` names the local store.
fn registry_for(
    location: lane_core::id::Location,
    flag: Option<RegistryTarget>,
) -> Result<Option<RegistryTarget>> {
    use lane_core::id::Location;
    match (location, flag) {
        (Location::Unspecified, flag) => Ok(flag),
        (Location::Local, None) => Ok(None),
        (Location::Local, Some(r)) => anyhow::bail!(
            "the reference names the local store (local/...), but --registry {r} was given; drop one of them"
        ),
        (Location::Registry(host), None) => {
            Ok(Some(host.parse().map_err(|e: String| {
                anyhow::anyhow!("registry {host}: {e}")
            })?))
        }
        (Location::Registry(host), Some(r)) if r.host() == host => Ok(Some(r)),
        (Location::Registry(host), Some(r)) => anyhow::bail!(
            "the reference names registry {host}, but --registry is {r}; drop one of them or make them agree"
        ),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.workspace.as_deref())?;
    match cli.command {
        Command::Build {
            images,
            json,
            dry_run,
        } => {
            let mut opts = BuildOptions::for_workspace(&ws);
            opts.quiet = json;
            if dry_run {
                let (plan, _) = build::plan(&ws, &images, &opts)?;
                println!("{}", serde_json::to_string_pretty(&plan)?);
                return Ok(ExitCode::SUCCESS);
            }
            let report = build::build(&ws, &images, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for i in &report.images {
                    println!(
                        "{}\t{}\t{} layers\t{}",
                        i.name,
                        i.manifest_digest,
                        i.layers.len(),
                        i.layout.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Release {
            images,
            registry,
            json,
            signing_key,
        } => {
            let registry = match registry {
                Some(r) => Some(r),
                None => publish::registry_from_env()?,
            };
            let signer = xtask::adapters::keys::load_signer(signing_key.as_deref(), &|k| {
                std::env::var(k).ok()
            })?;
            let mut store: Box<dyn Store> = match registry {
                Some(target) => Box::new(RegistryStore::new(target, json)),
                None => Box::new(LocalStore::new(ws.root.join("target/local-registry"))),
            };
            let opts = ReleaseOptions {
                images,
                quiet: json,
                signer,
            };
            let report = release::release(&ws, &opts, store.as_mut())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", release::summary(&report));
            }
            Ok(if report.accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench { quick, json } => {
            let report = xtask::commands::bench::bench(&ws, quick)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", xtask::commands::bench::table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchImports { layout, app } => {
            let v = xtask::commands::bench::import_analysis(&ws, &layout, &app)?;
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchLayer { input, out } => {
            let d = xtask::commands::bench::encode_tree(&input, &out)?;
            println!("{}", serde_json::to_string(&d)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out, json } => {
            let dir = if out.is_absolute() {
                out
            } else {
                ws.root.join(out)
            };
            let k = xtask::adapters::keys::keygen(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&k)?);
            } else {
                println!(
                    "private key {} (mode 0600): store it in the CI secret store as LANE_SIGNING_KEY; never commit it\n\
                     public key  {} (keyid {})\n\n\
                     To trust it, add it to [signing] trusted_keys in ci/release-policy.toml:\n\n\
                     [signing]\ntrusted_keys = [\n\"\"\"\n{}\"\"\",\n]",
                    k.private_key.display(),
                    k.public_key.display(),
                    k.keyid,
                    k.public_pem
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            reference,
            read:
                ReadArgs {
                    registry,
                    allow_local_builder,
                },
            json,
        } => {
            let (location, repository, digest) = verify::parse_digest_reference(&reference)?;
            let (policy, _) = release::load_policy(&ws)?;
            let registry = registry_for(location, registry)?;
            let mut store = open_store(&ws, registry, json)?;
            let (_, verdict) = verify::verify(
                store.as_mut(),
                &repository,
                &digest,
                &policy,
                allow_local_builder,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&verdict)?);
            } else {
                print!("{}", verify::summary(&reference, &verdict));
            }
            Ok(if verdict.verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Promote {
            reference,
            tag,
            to,
            read:
                ReadArgs {
                    registry,
                    allow_local_builder,
                },
            json,
        } => {
            let (location, repository, digest) = verify::parse_digest_reference(&reference)?;
            let (policy, _) = release::load_policy(&ws)?;
            let registry = registry_for(location, registry)?;
            let mut store = open_store(&ws, registry, json)?;
            let opts = promote::PromoteOptions {
                repository,
                digest,
                tag,
                to,
                allow_local_builder,
            };
            let r = promote::promote(store.as_mut(), &policy, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "promoted {}@{} -> {}:{} (was {}); the tag reads back as {}",
                    r.from,
                    r.digest,
                    r.repository,
                    r.tag,
                    r.previous.as_deref().unwrap_or("unset"),
                    r.resolves_to
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            reference,
            read:
                ReadArgs {
                    registry,
                    allow_local_builder,
                },
            json,
        } => {
            let (policy, _) = release::load_policy(&ws)?;
            let location = verify::parse_reference(&reference)?.location;
            let mut store = open_store(&ws, registry_for(location, registry)?, json)?;
            let a = audit::audit(store.as_mut(), &policy, &reference, allow_local_builder)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                print!("{}", audit::summary(&a));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock { check, json } => {
            let images = ws.load_images()?;
            let report = xtask::adapters::apt::lock(&ws.root, &images, check)?;
            let cache = ws.root.join("target/lane-cache");
            let python = xtask::adapters::pip::lock(&ws.root, &cache, &images, check)?;
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["python"] = serde_json::to_value(&python)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(p) = &python {
                for c in p.changes.iter().filter(|_| !check) {
                    println!("{c}");
                }
                let state = if check {
                    "is up to date"
                } else if p.written {
                    "written"
                } else {
                    "unchanged"
                };
                println!("{} {state} ({} wheels)", p.path, p.wheels);
            }
            if check {
                println!(
                    "{} is up to date ({} packages)",
                    report.path, report.packages
                );
            } else {
                for c in &report.changes {
                    println!("{c}");
                }
                let state = if report.written {
                    "written"
                } else {
                    "unchanged"
                };
                println!("{} {state} ({} packages)", report.path, report.packages);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Repro { images, json } => {
            let report = repro::repro(&ws, &images, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for i in &report.images {
                    let state = if i.equal { "reproducible" } else { "DIFFERS" };
                    println!("{}\t{state}\t{}", i.name, i.first);
                }
            }
            repro::check(&report)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish {
            images,
            registry,
            tag,
            json,
        } => {
            let registry = match registry {
                Some(r) => Some(r),
                None => publish::registry_from_env()?,
            };
            let opts = PublishOptions {
                registry,
                tag,
                quiet: json,
            };
            let run = publish::publish(&ws, &images, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                for i in &run.images {
                    println!(
                        "{}\t{}\ttags {}\t{} blobs uploaded ({} bytes), {} skipped, {} mounted\tcross-check ok",
                        i.image,
                        i.reference,
                        i.tags.join(","),
                        i.blobs.uploaded,
                        i.blobs.bytes_uploaded,
                        i.blobs.skipped,
                        i.blobs.mounted
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Smoke {
            image,
            json,
            keep_image,
        } => {
            let opts = SmokeOptions {
                keep_image,
                quiet: json,
                ..SmokeOptions::default()
            };
            let report = smoke::smoke(&ws, &image, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}\t{}\timage id {}\t{} {} ({} store)",
                    report.image,
                    report.manifest_digest,
                    report.image_id,
                    report.engine.address,
                    report.engine.version,
                    serde_json::to_value(report.engine.store)?
                        .as_str()
                        .unwrap_or("?")
                );
                for c in &report.checks {
                    let state = if c.passed { "passed" } else { "FAILED" };
                    let exit = c.exit_code.map_or_else(|| "-".into(), |e| e.to_string());
                    println!("{}\t{state}\texit {exit}\t{} ms", c.name, c.duration_ms);
                    for line in c.output.lines() {
                        println!("  | {line}");
                    }
                }
            }
            lane_core::smoke::check(&report)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drift {
            images,
            json,
            fail_on_unused,
            allow_unused,
            index,
        } => {
            let report = drift::drift(&ws, &images, index.as_deref(), json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", drift::render(&report));
            }
            let policy = DriftPolicy {
                fail_on_unused,
                allow_unused: allow_unused.into_iter().collect(),
            };
            let failures = lane_core::drift::failures(&report, &policy);
            for f in &failures {
                eprintln!("error: {f}");
            }
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
