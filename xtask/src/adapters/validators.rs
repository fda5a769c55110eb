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
    use lane_core::oci::canonical_json;
    use lane_core::testing::{decision, provenance_inputs as inputs, sbom_inputs as sample_sbom};
    use lane_core::{provenance, sbom, signing};
    use serde_json::{Value, json};

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

    fn signed(statement: &Value) -> Value {
        let key = signing::generate().unwrap();
        let signer = signing::Signer::from_pem(&key.private_pem, "test key").unwrap();
        signing::envelope(&canonical_json(statement).unwrap().bytes, Some(&signer))
    }

    #[test]
    fn conforming_statements_pass_the_strict_validators() {
        let f = Fixture::new("conforming");
        let prov = provenance::provenance_statement(&inputs()).unwrap();
        let ci = {
            let mut i = inputs();
            // A CI builder with its verified identity in internalParameters.
            i.builder = provenance::BuilderRun::ci(
                "https://ci.example.com",
                lane_core::testing::ci_identity(
                    "https://ci.example.com/org/repo/.github/workflows/release.yml@refs/heads/main",
                ),
                "0.1.0",
            )
            .unwrap();
            provenance::provenance_statement(&i).unwrap()
        };
        let gates = provenance::gate_statement(
            &inputs().subject,
            &decision(),
            "ci/release-policy.toml",
            &lane_core::id::Digest::of(b"policy"),
            Some("https://ci.example.com/org/repo/actions/runs/42/attempts/1"),
            // The entries a later release reads to carry gates over.
            Some(&provenance::GateBasis {
                definitions: lane_core::id::Digest::of(b"definitions"),
                revision: "0123456789abcdef0123456789abcdef01234567".into(),
                input_key: Some(lane_core::id::Digest::of(b"inputs")),
            }),
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
        let prov = provenance::provenance_statement(&inputs()).unwrap();
        let gates = provenance::gate_statement(
            &inputs().subject,
            &decision(),
            "ci/release-policy.toml",
            &lane_core::id::Digest::of(b"policy"),
            None,
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
            "_type": provenance::STATEMENT_TYPE,
            "subject": [{ "name": "127.0.0.1:5000/platform/hello", "digest": { "sha256": lane_core::id::Digest::of(b"manifest").hex() } }],
            "predicateType": sbom::PREDICATE_TYPE,
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
