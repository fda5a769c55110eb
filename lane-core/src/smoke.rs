//! Smoke checks as values: what the engine reported for one container
//! ([`Outcome`]) against what image.toml expects ([`SmokeSpec`]), the
//! image-identity rule (the engine's image ID must be our digest) and the
//! docker-archive `manifest.json` the engine loads. Running containers is
//! the engine adapter's job in xtask.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::spec::SmokeSpec;

/// How many bytes of a command's output the report keeps (the tail).
pub const OUTPUT_KEEP: usize = 4096;

/// Which image store the engine uses; it decides what the engine's image ID is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStore {
    /// The engine's own store (graph drivers): image ID = config digest.
    Classic,
    /// The containerd image store (snapshotters): image ID = manifest digest.
    Containerd,
}

impl ImageStore {
    /// Detects the store from `GET /info` `DriverStatus` pairs.
    pub fn from_driver_status(status: &[Vec<String>]) -> ImageStore {
        let containerd = status
            .iter()
            .flatten()
            .any(|v| v.contains("io.containerd.snapshotter"));
        if containerd {
            ImageStore::Containerd
        } else {
            ImageStore::Classic
        }
    }
}

/// The engine the smoke check ran in.
#[derive(Debug, Clone, Serialize)]
pub struct EngineFacts {
    /// `unix:///var/run/docker.sock` or the `DOCKER_HOST` it was reached at.
    pub address: String,
    pub version: String,
    pub api_version: String,
    pub store: ImageStore,
}

/// The isolation of one smoke container, as the engine reports it
/// (`GET /containers/{id}/json` `HostConfig` and `Config.User`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Isolation {
    pub network_mode: String,
    pub readonly_rootfs: bool,
    pub security_opt: Vec<String>,
    pub cap_drop: Vec<String>,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// The engine's log cap for the container (`1m`).
    pub log_max_size: String,
    pub user: String,
}

/// What happened to one smoke container, as observed.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The engine refused to start the container (missing or non-executable
    /// entrypoint, ...): its error message.
    pub start_error: Option<String>,
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// stdout and stderr, interleaved as the engine logged them.
    pub output: String,
    pub duration_ms: u64,
    pub isolation: Isolation,
    pub warnings: Vec<String>,
}

/// The result of one `[[smoke]]` command.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub command: Vec<String>,
    pub expect_exit: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_output: Option<String>,
    pub timeout_secs: u64,
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub passed: bool,
    /// Every reason the check failed (empty when it passed).
    pub failures: Vec<String>,
    /// The last [`OUTPUT_KEEP`] bytes of the container's stdout and stderr.
    pub output: String,
    pub output_truncated: bool,
    pub isolation: Isolation,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub engine_warnings: Vec<String>,
    /// The smoke-import's evidence (the `python-imports` check only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_imports: Option<crate::python::smoke::ImportEvidence>,
}

/// The smoke result of one image: what the provenance carries.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeReport {
    pub image: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// The image ID the engine reported after loading, checked against our
    /// digest (config digest on the classic store, manifest digest on the
    /// containerd store).
    pub image_id: String,
    pub engine: EngineFacts,
    /// Unique id of this run; every smoke container carries the label
    /// `lane.smoke.run=<run_id>`.
    pub run_id: String,
    /// The temporary tag the image was loaded under (removed afterwards
    /// unless kept).
    pub loaded_tag: String,
    /// The engine already had an image with this ID before the load.
    pub preexisting: bool,
    pub checks: Vec<CheckReport>,
    pub passed: bool,
}

/// The image ID the engine must report for our image.
pub fn expected_image_id(store: ImageStore, config_digest: &str, manifest_digest: &str) -> String {
    match store {
        ImageStore::Classic => config_digest.to_string(),
        ImageStore::Containerd => manifest_digest.to_string(),
    }
}

/// Checks that the engine's image is ours.
pub fn check_identity(
    store: ImageStore,
    engine_id: &str,
    config_digest: &str,
    manifest_digest: &str,
) -> Result<()> {
    let expected = expected_image_id(store, config_digest, manifest_digest);
    if engine_id != expected {
        let what = match store {
            ImageStore::Classic => "config digest (classic image store)",
            ImageStore::Containerd => "manifest digest (containerd image store)",
        };
        bail!(
            "the engine's image ID is {engine_id}, expected our {what} {expected}: the engine did not load the exact image the lane built"
        );
    }
    Ok(())
}

/// The last `keep` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, keep: usize) -> (&str, bool) {
    if s.len() <= keep {
        return (s, false);
    }
    let mut start = s.len() - keep;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    (&s[start..], true)
}

/// Judges one command's outcome against its `[[smoke]]` entry. Returns every
/// failure, not only the first.
pub fn evaluate(spec: &SmokeSpec, outcome: &Outcome) -> CheckReport {
    let mut failures = Vec::new();
    if let Some(e) = &outcome.start_error {
        failures.push(format!("the engine could not start the container: {e}"));
    }
    if outcome.timed_out {
        failures.push(format!(
            "did not finish within {} s (timeout_secs); the container was killed",
            spec.timeout_secs
        ));
    }
    if outcome.oom_killed {
        failures.push(format!(
            "killed by the out-of-memory killer at the smoke memory limit ({} bytes)",
            outcome.isolation.memory_bytes
        ));
    }
    if outcome.start_error.is_none() && !outcome.timed_out {
        match outcome.exit_code {
            Some(code) if code == spec.expect_exit => {}
            Some(code) => failures.push(format!(
                "exited with code {code}, expected {} (expect_exit)",
                spec.expect_exit
            )),
            None => failures.push("the engine reported no exit code".into()),
        }
    }
    if let Some(pattern) = &spec.expect_output {
        // The pattern was validated when image.toml was parsed.
        let matched = regex::RegexBuilder::new(pattern)
            .multi_line(true)
            .build()
            .map(|re| re.is_match(&outcome.output))
            .unwrap_or(false);
        if !matched {
            failures.push(format!(
                "the output does not match expect_output {pattern:?}"
            ));
        }
    }
    // The smoke-import names each module that failed, with its traceback,
    // and records what was imported.
    let python_imports = (spec.name == crate::python::smoke::CHECK_NAME).then(|| {
        let requested = crate::python::smoke::requested(spec);
        let ev = crate::python::smoke::evidence(&requested, &outcome.output);
        if outcome.start_error.is_none() && !outcome.timed_out {
            failures.extend(ev.failures());
        }
        ev
    });
    let (output, output_truncated) = tail(&outcome.output, OUTPUT_KEEP);
    CheckReport {
        name: spec.name.clone(),
        command: spec.command.clone(),
        expect_exit: spec.expect_exit,
        expect_output: spec.expect_output.clone(),
        timeout_secs: spec.timeout_secs,
        exit_code: outcome.exit_code,
        timed_out: outcome.timed_out,
        duration_ms: outcome.duration_ms,
        passed: failures.is_empty(),
        failures,
        output: output.to_string(),
        output_truncated,
        isolation: outcome.isolation.clone(),
        engine_warnings: outcome.warnings.clone(),
        python_imports,
    }
}

/// Every failure of a report as one error, with each failing command's logs.
pub fn check(report: &SmokeReport) -> Result<()> {
    let failed: Vec<&CheckReport> = report.checks.iter().filter(|c| !c.passed).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "smoke check of {} ({}) failed: {} of {} commands failed",
        report.image,
        report.manifest_digest,
        failed.len(),
        report.checks.len()
    );
    for c in failed {
        msg.push_str(&format!("\n  {} ({:?}):", c.name, c.command));
        for f in &c.failures {
            msg.push_str(&format!("\n    - {f}"));
        }
        msg.push_str("\n    logs:");
        if c.output.is_empty() {
            msg.push_str(" (none)");
        }
        for line in c.output.lines() {
            msg.push_str(&format!("\n      | {line}"));
        }
    }
    msg.push_str("\nfix the image or its [[smoke]] entries in image.toml, then run `cargo xtask smoke` again");
    bail!("{msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(expect_output: Option<&str>) -> SmokeSpec {
        SmokeSpec {
            name: "v".into(),
            command: vec!["/bin/x".into()],
            expect_exit: 0,
            expect_output: expect_output.map(str::to_string),
            timeout_secs: 5,
        }
    }

    #[test]
    fn store_kind_is_detected_from_driver_status() {
        let classic = vec![vec!["Backing Filesystem".to_string(), "extfs".to_string()]];
        assert_eq!(
            ImageStore::from_driver_status(&classic),
            ImageStore::Classic
        );
        let ctrd = vec![vec![
            "driver-type".to_string(),
            "io.containerd.snapshotter.v1".to_string(),
        ]];
        assert_eq!(
            ImageStore::from_driver_status(&ctrd),
            ImageStore::Containerd
        );
    }

    #[test]
    fn identity_depends_on_the_store() {
        let (c, m) = ("sha256:cc", "sha256:mm");
        assert!(check_identity(ImageStore::Classic, c, c, m).is_ok());
        assert!(check_identity(ImageStore::Containerd, m, c, m).is_ok());
        let e = check_identity(ImageStore::Classic, m, c, m).unwrap_err();
        assert!(format!("{e}").contains("expected our config digest"), "{e}");
        assert!(check_identity(ImageStore::Containerd, c, c, m).is_err());
    }

    #[test]
    fn every_failure_is_reported() {
        let out = Outcome {
            exit_code: Some(3),
            output: "boom\n".into(),
            ..Outcome::default()
        };
        let r = evaluate(&spec(Some("^ok")), &out);
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
        assert!(r.failures[0].contains("exited with code 3, expected 0"));
        assert!(r.failures[1].contains("does not match"));
    }

    #[test]
    fn passing_outcome_and_multiline_pattern() {
        let out = Outcome {
            exit_code: Some(0),
            output: "warming up\nok 1\n".into(),
            ..Outcome::default()
        };
        assert!(evaluate(&spec(Some("^ok \\d")), &out).passed);
    }

    #[test]
    fn start_error_and_timeout_are_failures() {
        let out = Outcome {
            start_error: Some("exec: \"/bin/x\": permission denied".into()),
            ..Outcome::default()
        };
        let r = evaluate(&spec(None), &out);
        assert_eq!(r.failures.len(), 1);
        assert!(r.failures[0].contains("permission denied"));
        let out = Outcome {
            timed_out: true,
            exit_code: Some(137),
            ..Outcome::default()
        };
        let r = evaluate(&spec(None), &out);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("killed"));
    }

    #[test]
    fn output_keeps_the_tail_at_a_char_boundary() {
        assert_eq!(tail("abc", 5), ("abc", false));
        assert_eq!(tail("abcdef", 3), ("def", true));
        assert_eq!(tail("aé", 1), ("", true));
    }
}
