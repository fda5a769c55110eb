//! Sample inputs for the tests of this crate and of xtask (which enables
//! the `testing` feature as a dev-dependency): one provenance, one gate
//! decision, one SBOM and fixed signing keys, shared so no test keeps its
//! own copy.

use serde_json::json;

use crate::gates::{Decision, GateName, GateResult, decide};
use crate::id::Digest;
use crate::identity::{CiIdentity, KeyUsed};
use crate::provenance::{BuilderRun, Input, LANE_PROJECT, ProvenanceInputs, Subject};
use crate::sbom::{Binary, Crate, DebPackage, PlacedFile, PythonDist, SbomInputs};
use crate::signing::Signer;

pub fn provenance_inputs() -> ProvenanceInputs {
    let d = |s: &[u8]| Digest::of(s);
    ProvenanceInputs {
        subject: Subject {
            name: "127.0.0.1:5000/platform/hello".into(),
            digest: d(b"manifest"),
        },
        image: "hello".into(),
        tags: vec!["latest".into()],
        source_repository: LANE_PROJECT.into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        tree_clean: true,
        policy_path: "ci/release-policy.toml".into(),
        policy_digest: d(b"policy"),
        rustc: "rustc 1.95.0".into(),
        lane_version: "0.1.0".into(),
        encoder: "lane-layer/format=1".into(),
        secrets_allowed: Vec::new(),
        inputs: vec![
            Input::Source {
                url: LANE_PROJECT.into(),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
            },
            Input::File {
                path: "Cargo.lock".into(),
                sha256: d(b"Cargo.lock"),
            },
            Input::File {
                path: "lockfiles/debian.lock".into(),
                sha256: d(b"debian.lock"),
            },
            Input::Deb {
                name: "base-files".into(),
                version: "12.4+deb12u15".into(),
                arch: "amd64".into(),
                distro: None,
                sha256: d(b"base-files.deb"),
            },
            Input::Deb {
                name: "tzdata".into(),
                version: "2025b-0+deb12u2".into(),
                arch: "all".into(),
                distro: None,
                sha256: d(b"tzdata.deb"),
            },
            Input::Crate {
                name: "serde".into(),
                version: "1.0.228".into(),
                sha256: d(b"serde.crate"),
            },
            Input::Wheel {
                name: "Flask".into(),
                version: "3.1.0".into(),
                sha256: d(b"flask.whl"),
            },
            Input::BaseImage {
                repository: "base-cc".into(),
                digest: d(b"base manifest"),
                tag: Some("latest".into()),
            },
        ],
        builder: BuilderRun::local("0.1.0", None),
        started_on: "2026-01-01T00:00:00Z".into(),
        finished_on: "2026-01-01T00:01:00Z".into(),
    }
}

/// A verified CI identity whose workflow is `builder_id` (a URI
/// `https://SERVER/OWNER/REPO/PATH@REF`), issued by GitHub's issuer for
/// the sample revision of [`provenance_inputs`], run 42.
pub fn ci_identity(builder_id: &str) -> CiIdentity {
    let workflow = builder_id
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, path)| path);
    let repository = workflow.split('/').take(2).collect::<Vec<_>>().join("/");
    let git_ref = workflow.rsplit_once('@').map_or("", |(_, r)| r);
    let claims = json!({
        "iss": crate::identity::GITHUB_ISSUER,
        "aud": crate::identity::DEFAULT_AUDIENCE,
        "sub": format!("repo:{repository}:ref:{git_ref}"),
        "repository": repository,
        "ref": git_ref,
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "job_workflow_ref": workflow,
        "workflow_ref": workflow,
        "run_id": "42",
        "run_attempt": "1",
        "iat": 1767225600,
        "exp": 1767225900,
    });
    CiIdentity {
        issuer: crate::identity::GITHUB_ISSUER.into(),
        audience: crate::identity::DEFAULT_AUDIENCE.into(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        key: KeyUsed {
            kid: "sample-key".into(),
            alg: "ES256".into(),
            jwks_uri: format!("{}/.well-known/jwks", crate::identity::GITHUB_ISSUER),
            thumbprint: Digest::of(b"sample key"),
        },
        token: Digest::of(b"sample token"),
    }
}

pub fn decision() -> Decision {
    decide(
        &[GateName::Smoke, GateName::NoDrift],
        &[
            GateResult::passed(GateName::NoDrift, "ok", json!({})),
            GateResult::failed(GateName::NoUnusedPackages, "unused: x", json!({})),
        ],
    )
}

pub fn sbom_inputs() -> SbomInputs {
    let d = |s: &[u8]| Digest::of(s);
    let deb = |name: &str, version: &str, arch: &str| DebPackage {
        name: name.into(),
        version: version.into(),
        arch: arch.into(),
        sha256: d(name.as_bytes()),
        license: None,
    };
    let krate = |name: &str, version: &str, license: &str| Crate {
        name: name.into(),
        version: version.into(),
        source: Some("registry+https://github.com/rust-lang/crates.io-index".into()),
        checksum: Some(d(name.as_bytes())),
        license: Some(license.into()),
    };
    SbomInputs {
        image: "hello".into(),
        config_digest: d(b"config"),
        manifest: Some(("127.0.0.1:5000/platform/hello".into(), d(b"manifest"))),
        source_url: "https://git.example.com/platform/release-lane".into(),
        source_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        source_date_epoch: 1_700_000_000,
        lane_version: "0.1.0".into(),
        debs: vec![
            deb("libc6", "2.36-9+deb12u13", "amd64"),
            deb("base-files", "12.4+deb12u15", "amd64"),
            deb("libstdc++6", "12.2.0-14+deb12u1", "amd64"),
            deb("tzdata", "2025b-0+deb12u2", "all"),
        ],
        binaries: vec![Binary {
            file: PlacedFile::of("/usr/local/bin/hello", b"\x7fELF hello"),
            package: "hello".into(),
            crates: vec![
                Crate {
                    name: "hello".into(),
                    version: "0.1.0".into(),
                    source: None,
                    checksum: None,
                    license: Some("Apache-2.0".into()),
                },
                krate("serde", "1.0.228", "MIT OR Apache-2.0"),
                krate("memchr", "2.7.4", "Unlicense/MIT"),
            ],
        }],
        python: vec![PythonDist {
            name: "Flask".into(),
            version: "3.1.0".into(),
            sha256: d(b"flask"),
        }],
        files: vec![PlacedFile::of("/etc/hello/hello.toml", b"greeting = 1\n")],
    }
}

/// A fixed ECDSA P-256 test key, one per `seed` (never trusted by the
/// repository's policy).
pub fn signer(seed: u8) -> Signer {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    Signer::from_pem(&pem, &format!("test key {seed}")).unwrap()
}
