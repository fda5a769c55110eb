//! The independent validators (ci/validators.sh installs them into a venv):
//! `ci/validate/check-statement` (in-toto Statement v1, SLSA Provenance v1,
//! test-result v0.1, via the in-toto project's protobuf bindings, unknown
//! fields rejected) and `ci/validate/check-sbom` (SPDX 2.3 via spdx-tools).
//! Runs them on files; the tests here are the conformance tests of what the
//! lane emits.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use xshell::{Shell, cmd};

/// The validators' venv: `$LANE_VALIDATORS`, else `target/validators` under
/// the repository root (where ci/validators.sh puts it).
pub fn venv(root: &Path, get: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    get("LANE_VALIDATORS")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/validators"))
}

/// What a validator said: accepted, and its output (the reasons when not).
#[derive(Debug)]
pub struct Outcome {
    pub accepted: bool,
    pub output: String,
}

fn run(root: &Path, venv: &Path, script: &str, files: &[PathBuf]) -> Result<Outcome> {
    let python = venv.join("bin/python");
    if !python.exists() {
        bail!(
            "the independent validators are not installed ({} is missing): run bash ci/validators.sh",
            python.display()
        );
    }
    let script = root.join("ci/validate").join(script);
    let sh = Shell::new()?;
    let out = cmd!(sh, "{python} {script} {files...}")
        .env("LANE_VALIDATORS", venv)
        .ignore_status()
        .output()?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(Outcome {
            accepted: true,
            output,
        }),
        Some(1) => Ok(Outcome {
            accepted: false,
            output,
        }),
        _ => bail!(
            "{} could not run ({}): {output}; reinstall with bash ci/validators.sh",
            script.display(),
            out.status
        ),
    }
}

/// Runs `check-statement` on statements or DSSE envelopes.
pub fn check_statements(root: &Path, venv: &Path, files: &[PathBuf]) -> Result<Outcome> {
    run(root, venv, "check-statement", files)
}

/// Runs `check-sbom` on SPDX 2.3 JSON documents.
pub fn check_sbom(root: &Path, venv: &Path, files: &[PathBuf]) -> Result<Outcome> {
    run(root, venv, "check-sbom", files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lane_core::gates::{GateResult, decide};
    use lane_core::id::Digest;
    use lane_core::oci::canonical_json;
    use lane_core::{provenance, sbom, signing, slsa};
    use serde_json::{Value, json};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    struct Fixture {
        root: PathBuf,
        venv: PathBuf,
        dir: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask sits in the workspace")
                .to_path_buf();
            let venv = venv(&root, &|k| std::env::var(k).ok());
            let dir = std::env::temp_dir()
                .join(format!("lane-conformance-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            Fixture { root, venv, dir }
        }

        fn write(&self, name: &str, v: &Value) -> PathBuf {
            let p = self.dir.join(name);
            std::fs::write(&p, canonical_json(v).unwrap().bytes).unwrap();
            p
        }

        fn statements(&self, files: &[PathBuf]) -> Outcome {
            check_statements(&self.root, &self.venv, files).unwrap()
        }

        fn sboms(&self, files: &[PathBuf]) -> Outcome {
            check_sbom(&self.root, &self.venv, files).unwrap()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn inputs() -> slsa::ProvenanceInputs {
        let deb = |name: &str, version: &str, arch: &str| slsa::Input::Deb {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            distro: Some("bookworm".into()),
            sha256: d(name),
        };
        slsa::ProvenanceInputs {
            subject: slsa::Subject {
                name: "127.0.0.1:5000/platform/hello".into(),
                digest: d("manifest"),
            },
            image: "hello".into(),
            tags: vec!["latest".into()],
            source_repository: slsa::LANE_PROJECT.into(),
            revision: COMMIT.into(),
            tree_clean: true,
            policy_path: "ci/release-policy.toml".into(),
            policy_digest: d("policy"),
            rustc: "rustc 1.95.0".into(),
            lane_version: "0.1.0".into(),
            encoder: "lane-layer/format=1".into(),
            inputs: vec![
                slsa::Input::Source {
                    url: slsa::LANE_PROJECT.into(),
                    commit: COMMIT.into(),
                },
                slsa::Input::File {
                    path: "Cargo.lock".into(),
                    sha256: d("Cargo.lock"),
                },
                slsa::Input::File {
                    path: "lockfiles/debian.lock".into(),
                    sha256: d("debian.lock"),
                },
                deb("base-files", "12.4+deb12u15", "amd64"),
                deb("libc6", "2.36-9+deb12u13", "amd64"),
                deb("ca-certificates", "20250419~deb12u2", "all"),
                slsa::Input::Crate {
                    name: "serde".into(),
                    version: "1.0.228".into(),
                    sha256: d("serde"),
                },
                slsa::Input::Wheel {
                    name: "Flask".into(),
                    version: "3.1.0".into(),
                    sha256: d("flask"),
                },
                slsa::Input::BaseImage {
                    repository: "127.0.0.1:5000/platform/base-cc".into(),
                    digest: d("base"),
                    tag: Some("latest".into()),
                },
            ],
            builder: slsa::BuilderRun::from_env(&|_| None, "0.1.0"),
            started_on: "2026-01-01T00:00:00Z".into(),
            finished_on: "2026-01-01T00:01:00Z".into(),
        }
    }

    fn decision() -> lane_core::gates::Decision {
        decide(
            &["smoke".into(), "no-drift".into()],
            &[
                GateResult::passed("no-drift", "ok", json!({})),
                GateResult::passed("smoke", "ok", json!({})),
                GateResult::failed("bench", "slow", json!({})),
            ],
        )
    }

    fn signed(statement: &Value) -> Value {
        let key = signing::generate().unwrap();
        let signer = signing::Signer::from_pem(&key.private_pem, "test key").unwrap();
        signing::envelope(&canonical_json(statement).unwrap().bytes, Some(&signer))
    }

    #[test]
    fn conforming_statements_pass_the_strict_validators() {
        let f = Fixture::new("conforming");
        let prov = slsa::provenance_statement(&inputs()).unwrap();
        let ci = {
            let mut i = inputs();
            i.builder = slsa::BuilderRun {
                id: "https://ci.example.com/org/repo/.github/workflows/release.yml@refs/heads/main"
                    .into(),
                version: Default::default(),
                invocation_id: "https://ci.example.com/org/repo/actions/runs/42/attempts/1".into(),
            };
            slsa::provenance_statement(&i).unwrap()
        };
        let gates = slsa::gate_statement(
            &inputs().subject,
            &decision(),
            "ci/release-policy.toml",
            &d("policy"),
            Some("https://ci.example.com/org/repo/actions/runs/42/attempts/1"),
        );
        let files = [
            f.write("provenance.json", &prov),
            f.write("provenance-ci.json", &ci),
            f.write("gates.json", &gates),
            f.write("provenance.dsse.json", &signed(&prov)),
            f.write("gates.dsse.json", &signed(&gates)),
        ];
        let out = f.statements(&files);
        assert!(out.accepted, "{}", out.output);
        assert_eq!(
            out.output.matches("ok ").count(),
            files.len(),
            "{}",
            out.output
        );
    }

    #[test]
    fn unknown_fields_and_non_uris_are_rejected() {
        let f = Fixture::new("unknown");
        let prov = slsa::provenance_statement(&inputs()).unwrap();
        let gates = slsa::gate_statement(
            &inputs().subject,
            &decision(),
            "ci/release-policy.toml",
            &d("policy"),
            None,
        );
        let cases: Vec<(&str, Value, &str)> = vec![
            {
                let mut s = prov.clone();
                s["predicate"]["runDetails"]["builder"]["authoritative"] = json!(true);
                ("builder-extra", s, "no field named \"authoritative\"")
            },
            {
                let mut s = prov.clone();
                s["predicate"]["buildDefinition"]["resolvedDependencies"][3]["purl"] = json!("x");
                ("dependency-extra", s, "no field named \"purl\"")
            },
            {
                let mut s = prov.clone();
                s["predicate"]["runDetails"]["builder"]["id"] = json!("local");
                ("builder-not-uri", s, "'local' is not a URI")
            },
            {
                let mut s = prov.clone();
                s["signedBy"] = json!("me");
                ("statement-extra", s, "no field named \"signedBy\"")
            },
            {
                let mut s = gates.clone();
                s["predicate"]["requiredTests"] = json!(["smoke"]);
                ("gates-extra", s, "no field named \"requiredTests\"")
            },
            {
                let mut s = gates.clone();
                s["predicate"]["result"] = json!("ACCEPTED");
                ("gates-result", s, "is not one of")
            },
        ];
        for (name, doc, reason) in cases {
            let out = f.statements(&[f.write(&format!("{name}.json"), &doc)]);
            assert!(!out.accepted, "{name}: accepted: {}", out.output);
            assert!(out.output.contains(reason), "{name}: {}", out.output);
        }
        // Inside a signed envelope too.
        let mut s = prov.clone();
        s["predicate"]["runDetails"]["builder"]["authoritative"] = json!(false);
        let out = f.statements(&[f.write("extra.dsse.json", &signed(&s))]);
        assert!(
            !out.accepted && out.output.contains("authoritative"),
            "{}",
            out.output
        );
    }

    /// Today's provenance (lane_core::provenance) fails a strict parser for
    /// the reasons issue 15 names; its gate statement already conforms.
    #[test]
    fn todays_provenance_is_rejected_for_the_reasons_issue_15_names() {
        let f = Fixture::new("today");
        let today = provenance::ProvenanceInputs {
            subject_name: "127.0.0.1:5000/platform/hello".into(),
            manifest_digest: d("manifest").to_string(),
            image: "hello".into(),
            tags: vec!["latest".into()],
            source_repository: slsa::LANE_PROJECT.into(),
            revision: COMMIT.into(),
            tree_clean: true,
            policy_path: "ci/release-policy.toml".into(),
            policy_digest: d("policy").to_string(),
            rustc: "rustc 1.95.0".into(),
            lane_version: "0.1.0".into(),
            encoder: "lane-layer/format=1".into(),
            dependencies: vec![
                provenance::Dependency::uri(
                    &format!("git+{}@{COMMIT}", slsa::LANE_PROJECT),
                    "gitCommit",
                    COMMIT,
                ),
                provenance::Dependency::named("Cargo.lock", "sha256", d("lock").hex()),
            ],
            builder: provenance::Builder::from_env(&|_| None),
            started_on: "2026-01-01T00:00:00Z".into(),
            finished_on: "2026-01-01T00:01:00Z".into(),
        };
        let stmt = provenance::provenance_statement(&today);
        let out = f.statements(&[f.write("today.json", &stmt)]);
        assert!(!out.accepted, "{}", out.output);
        assert!(
            out.output
                .contains("Builder\" has no field named \"authoritative\""),
            "{}",
            out.output
        );
        // Without the extra field, the local builder's id is not a URI.
        let mut s = stmt.clone();
        s["predicate"]["runDetails"]["builder"]
            .as_object_mut()
            .unwrap()
            .remove("authoritative");
        let out = f.statements(&[f.write("today-no-flag.json", &s)]);
        assert!(!out.accepted, "{}", out.output);
        assert!(
            out.output
                .contains("runDetails.builder.id 'local' is not a URI"),
            "{}",
            out.output
        );
        // And its resolvedDependencies name no package: no purl at all.
        let deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert!(
            !deps
                .iter()
                .any(|x| x["uri"].as_str().is_some_and(|u| u.starts_with("pkg:")))
        );
        let gates = provenance::gate_statement(
            "127.0.0.1:5000/platform/hello",
            d("manifest").as_str(),
            &decision(),
            &provenance::Dependency::named("ci/release-policy.toml", "sha256", d("policy").hex()),
        );
        let out = f.statements(&[f.write("today-gates.json", &gates)]);
        assert!(out.accepted, "{}", out.output);
    }

    fn sample_sbom() -> sbom::SbomInputs {
        let deb = |name: &str, version: &str, arch: &str| sbom::DebPackage {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            sha256: d(name),
            license: None,
        };
        let krate = |name: &str, version: &str, license: &str| sbom::Crate {
            name: name.into(),
            version: version.into(),
            source: Some("registry+https://github.com/rust-lang/crates.io-index".into()),
            checksum: Some(d(name)),
            license: Some(license.into()),
        };
        sbom::SbomInputs {
            image: "hello".into(),
            config_digest: d("config"),
            manifest: Some(("127.0.0.1:5000/platform/hello".into(), d("manifest"))),
            source_url: slsa::LANE_PROJECT.into(),
            source_commit: COMMIT.into(),
            source_date_epoch: 1_700_000_000,
            lane_version: "0.1.0".into(),
            debs: vec![
                deb("base-files", "12.4+deb12u15", "amd64"),
                deb("libc6", "2.36-9+deb12u13", "amd64"),
                deb("libstdc++6", "12.2.0-14+deb12u1", "amd64"),
                deb("tzdata", "2025b-0+deb12u2", "all"),
            ],
            binaries: vec![sbom::Binary {
                file: sbom::PlacedFile::of("/usr/local/bin/hello", b"\x7fELF"),
                package: "hello".into(),
                crates: vec![
                    sbom::Crate {
                        name: "hello".into(),
                        version: "0.1.0".into(),
                        source: None,
                        checksum: None,
                        license: Some("Apache-2.0".into()),
                    },
                    krate("serde", "1.0.228", "MIT OR Apache-2.0"),
                    krate("memchr", "2.7.4", "Unlicense/MIT"),
                    krate(
                        "unicode-ident",
                        "1.0.18",
                        "(MIT OR Apache-2.0) AND Unicode-3.0",
                    ),
                ],
            }],
            python: vec![sbom::PythonDist {
                name: "Flask".into(),
                version: "3.1.0".into(),
                sha256: d("flask"),
            }],
            files: vec![sbom::PlacedFile::of("/etc/hello", b"greeting\n")],
        }
    }

    #[test]
    fn sbom_validates_with_spdx_tools_and_is_reproducible() {
        let f = Fixture::new("sbom");
        let a = canonical_json(&sbom::sbom(&sample_sbom()).unwrap()).unwrap();
        let b = canonical_json(&sbom::sbom(&sample_sbom()).unwrap()).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.digest, b.digest);
        let path = f.dir.join("hello.spdx.json");
        std::fs::write(&path, &a.bytes).unwrap();
        let out = f.sboms(std::slice::from_ref(&path));
        assert!(out.accepted, "{}", out.output);

        let doc: Value = serde_json::from_slice(&a.bytes).unwrap();
        let mut extra = doc.clone();
        extra["packages"][1]["vendor"] = json!("x");
        let out = f.sboms(&[f.write("extra.spdx.json", &extra)]);
        assert!(!out.accepted, "{}", out.output);
        assert!(
            out.output.contains("unknown field 'packages[].vendor'"),
            "{}",
            out.output
        );

        let mut bad_license = doc.clone();
        bad_license["packages"][1]["licenseDeclared"] = json!("MIT OR (");
        let out = f.sboms(&[f.write("license.spdx.json", &bad_license)]);
        assert!(!out.accepted, "{}", out.output);

        // Signed as the other statements are: an in-toto statement with the
        // SPDX predicate, in a DSSE envelope, passes check-statement.
        let statement = json!({
            "_type": slsa::STATEMENT_TYPE,
            "subject": [{ "name": "127.0.0.1:5000/platform/hello", "digest": { "sha256": d("manifest").hex() } }],
            "predicateType": "https://spdx.dev/Document/v2.3",
            "predicate": doc,
        });
        let out = f.statements(&[f.write("sbom.dsse.json", &signed(&statement))]);
        assert!(out.accepted, "{}", out.output);
    }

    #[test]
    fn a_missing_venv_is_a_failure_that_says_how_to_fix_it() {
        let f = Fixture::new("novenv");
        let e = check_statements(&f.root, &f.dir.join("nothing"), &[f.dir.join("x.json")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("run bash ci/validators.sh"), "{e}");
    }
}
