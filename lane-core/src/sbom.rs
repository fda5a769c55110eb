//! The SBOM of one image: an SPDX 2.3 JSON document made from values the
//! lane already holds (the Debian lock, the crates compiled into each
//! binary, the Python lock, the files it placed). Pure: values in, a JSON
//! value out; the caller serialises it once with
//! [`crate::oci::canonical_json`] (keys in byte order, one serialisation).
//!
//! Deterministic: nothing comes from the clock or the machine.
//! `documentNamespace` is `SOURCE/spdx/IMAGE/CONFIG-HEX` and `created` is
//! SOURCE_DATE_EPOCH. The config digest names the image's content (it holds
//! every layer's diff_id, the history and the created time) and is known
//! before the manifest is written; the manifest digest, when known, goes in
//! the image package's purl. Lists are sorted and SPDX ids are derived from
//! names, so the order of the inputs does not matter.
//!
//! Shape: the document DESCRIBES the image package (purpose CONTAINER); the
//! image CONTAINS every Debian package, Python distribution, and the package
//! of files the lane placed (`IMAGE-lane-files`, files analysed, with its
//! verification code), which CONTAINS each placed file; each binary file is GENERATED_FROM its workspace crate and STATIC_LINKs
//! every other crate compiled into it. Packages carry their package URL as a
//! `PACKAGE-MANAGER` `purl` external reference.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde_json::{Value, json};
use sha1::Digest as _;

use crate::id::Digest;
use crate::purl;

pub const MEDIA_TYPE: &str = "application/spdx+json";
/// The in-toto predicate type of an SPDX 2.3 document (the in-toto
/// attestation framework's registered SPDX predicate): the SBOM is attached
/// as a signed in-toto statement with the document as its predicate.
pub const PREDICATE_TYPE: &str = "https://spdx.dev/Document/v2.3";
const NOASSERTION: &str = "NOASSERTION";

/// A Debian package installed into the image (from the lock and status.d).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// sha256 of the `.deb` (the lock's).
    pub sha256: Digest,
    /// An SPDX license expression when known; Debian's copyright files are
    /// free text, so usually `None` (NOASSERTION).
    pub license: Option<String>,
}

/// A crate compiled into a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// Cargo's source id (`registry+URL`, `git+URL#SHA`); `None` for a
    /// workspace or path crate (then the source commit is where it comes from).
    pub source: Option<String>,
    /// Cargo.lock's `checksum` (sha256 of the `.crate`), registry crates only.
    pub checksum: Option<Digest>,
    /// Cargo's `license` field (an SPDX expression; legacy `A/B` is read as `A OR B`).
    pub license: Option<String>,
}

/// A file the lane placed into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedFile {
    /// Absolute path in the image (`/usr/local/bin/hello`).
    pub path: String,
    pub sha256: Digest,
    /// SPDX 2.3 requires a SHA1 on every file.
    pub sha1_hex: String,
}

impl PlacedFile {
    pub fn of(path: &str, bytes: &[u8]) -> PlacedFile {
        let sha1 = sha1::Sha1::digest(bytes);
        PlacedFile {
            path: path.to_string(),
            sha256: Digest::of(bytes),
            sha1_hex: sha1.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// A workspace binary in the image: its file and the crates compiled into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub file: PlacedFile,
    /// The workspace package it was built from (one of `crates`).
    pub package: String,
    pub crates: Vec<Crate>,
}

/// A Python distribution installed into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonDist {
    pub name: String,
    pub version: String,
    /// sha256 of the wheel (the Python lock's).
    pub sha256: Digest,
}

/// Everything the SBOM of one image is made from.
#[derive(Debug, Clone)]
pub struct SbomInputs {
    pub image: String,
    /// The image config digest: names the content; fixes the namespace.
    pub config_digest: Digest,
    /// The manifest digest and repository, when known, for the image's purl.
    pub manifest: Option<(String, Digest)>,
    /// The committed source URL (Cargo.toml `workspace.metadata.lane.source`).
    pub source_url: String,
    pub source_commit: String,
    pub source_date_epoch: u64,
    pub lane_version: String,
    pub debs: Vec<DebPackage>,
    pub binaries: Vec<Binary>,
    pub python: Vec<PythonDist>,
    /// Other files the lane placed (configuration, ...).
    pub files: Vec<PlacedFile>,
}

/// `SPDXRef-` ids allow letters, digits, `.` and `-`.
fn spdx_id(kind: &str, parts: &[&str]) -> String {
    let mut id = format!("SPDXRef-{kind}");
    for p in parts {
        id.push('-');
        id.extend(p.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '.'
            }
        }));
    }
    id
}

fn purl_ref(locator: String) -> Value {
    json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": locator }])
}

fn sha256(d: &Digest) -> Value {
    json!({ "algorithm": "SHA256", "checksumValue": d.hex() })
}

/// Cargo's legacy `MIT/Apache-2.0` is an SPDX `OR`.
fn license_expression(l: Option<&str>) -> String {
    match l.map(str::trim).filter(|l| !l.is_empty()) {
        None => NOASSERTION.into(),
        Some(l) if l.contains('/') => l.split('/').map(str::trim).collect::<Vec<_>>().join(" OR "),
        Some(l) => l.to_string(),
    }
}

fn package(
    id: &str,
    name: &str,
    version: &str,
    download: &str,
    checksum: Option<&Digest>,
    license: &str,
    purl: Option<String>,
) -> Value {
    let mut p = json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "downloadLocation": download,
        "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": license,
        "copyrightText": NOASSERTION,
    });
    if let Some(d) = checksum {
        p["checksums"] = json!([sha256(d)]);
    }
    if let Some(u) = purl {
        p["externalRefs"] = purl_ref(u);
    }
    p
}

fn file(id: &str, f: &PlacedFile) -> Value {
    json!({
        "SPDXID": id,
        "fileName": format!(".{}", f.path),
        "checksums": [
            { "algorithm": "SHA1", "checksumValue": f.sha1_hex },
            sha256(&f.sha256),
        ],
        "licenseConcluded": NOASSERTION,
        "copyrightText": NOASSERTION,
    })
}

/// SPDX 2.3 7.9: sha1 of the files' sha1s (lowercase hex), sorted, concatenated.
fn verification_code(sha1s: &[&str]) -> String {
    let mut sorted: Vec<&str> = sha1s.to_vec();
    sorted.sort_unstable();
    sha1::Sha1::digest(sorted.concat().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn relationship(a: &str, kind: &str, b: &str) -> (String, String, String) {
    (a.to_string(), kind.to_string(), b.to_string())
}

/// The SPDX 2.3 document of one image.
pub fn sbom(i: &SbomInputs) -> Result<Value> {
    let image_id = "SPDXRef-Image";
    // Keyed by SPDX id: sorted, and one entry per id.
    let mut packages: BTreeMap<String, Value> = BTreeMap::new();
    let mut files: BTreeMap<String, Value> = BTreeMap::new();
    let mut rels: BTreeSet<(String, String, String)> = BTreeSet::new();
    rels.insert(relationship("SPDXRef-DOCUMENT", "DESCRIBES", image_id));

    let mut image = package(
        image_id,
        &i.image,
        i.config_digest.as_str(),
        NOASSERTION,
        None,
        NOASSERTION,
        match &i.manifest {
            Some((repo, d)) => Some(purl::oci(repo, d, None)?),
            None => None,
        },
    );
    image["primaryPackagePurpose"] = json!("CONTAINER");
    packages.insert(image_id.into(), image);

    for d in &i.debs {
        let id = spdx_id("deb", &[&d.name, &d.arch, &d.version]);
        let p = package(
            &id,
            &d.name,
            &d.version,
            NOASSERTION,
            Some(&d.sha256),
            &license_expression(d.license.as_deref()),
            Some(purl::deb(&d.name, &d.version, &d.arch, None)?),
        );
        packages.insert(id.clone(), p);
        rels.insert(relationship(image_id, "CONTAINS", &id));
    }
    for p in &i.python {
        let id = spdx_id("pypi", &[&p.name, &p.version]);
        let v = package(
            &id,
            &p.name,
            &p.version,
            NOASSERTION,
            Some(&p.sha256),
            NOASSERTION,
            Some(purl::pypi(&p.name, &p.version)?),
        );
        packages.insert(id.clone(), v);
        rels.insert(relationship(image_id, "CONTAINS", &id));
    }
    let workspace_download = format!("git+{}@{}", i.source_url, i.source_commit);
    // Files must belong to a package whose files were analysed (SPDX 2.3
    // 7.8): the lane's own layers are such a package, every file listed.
    let placed_id = "SPDXRef-Placed";
    let mut placed_sha1: Vec<&str> = Vec::new();
    for b in &i.binaries {
        let fid = spdx_id("File", &[&b.file.path]);
        files.insert(fid.clone(), file(&fid, &b.file));
        placed_sha1.push(&b.file.sha1_hex);
        rels.insert(relationship(placed_id, "CONTAINS", &fid));
        for c in &b.crates {
            let id = spdx_id(
                "crate",
                &[
                    &c.name,
                    &c.version,
                    if c.source.is_some() { "" } else { "ws" },
                ],
            );
            let id = id.trim_end_matches('-').to_string();
            let registry = c
                .source
                .as_deref()
                .and_then(|s| s.strip_prefix("registry+"))
                .filter(|r| !r.ends_with("/rust-lang/crates.io-index"));
            let download = if c.source.is_none() {
                workspace_download.as_str()
            } else {
                NOASSERTION
            };
            let v = package(
                &id,
                &c.name,
                &c.version,
                download,
                c.checksum.as_ref(),
                &license_expression(c.license.as_deref()),
                Some(purl::cargo(&c.name, &c.version, registry)?),
            );
            packages.insert(id.clone(), v);
            let kind = if c.source.is_none() && c.name == b.package {
                "GENERATED_FROM"
            } else {
                "STATIC_LINK"
            };
            rels.insert(relationship(&fid, kind, &id));
        }
    }
    for f in &i.files {
        let fid = spdx_id("File", &[&f.path]);
        files.insert(fid.clone(), file(&fid, f));
        placed_sha1.push(&f.sha1_hex);
        rels.insert(relationship(placed_id, "CONTAINS", &fid));
    }
    if !files.is_empty() {
        let mut placed = package(
            placed_id,
            &format!("{}-lane-files", i.image),
            i.config_digest.as_str(),
            NOASSERTION,
            None,
            NOASSERTION,
            None,
        );
        placed["filesAnalyzed"] = json!(true);
        placed["packageVerificationCode"] =
            json!({ "packageVerificationCodeValue": verification_code(&placed_sha1) });
        packages.insert(placed_id.into(), placed);
        rels.insert(relationship(image_id, "CONTAINS", placed_id));
    }

    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", i.image, i.config_digest),
        "documentNamespace": format!(
            "{}/spdx/{}/{}",
            i.source_url.trim_end_matches('/'),
            i.image,
            i.config_digest.hex()
        ),
        "creationInfo": {
            "created": crate::oci::rfc3339(i.source_date_epoch),
            "creators": [format!("Tool: release-lane-{}", i.lane_version)],
        },
        "packages": packages.into_values().collect::<Vec<_>>(),
        "relationships": rels
            .into_iter()
            .map(|(a, k, b)| json!({ "spdxElementId": a, "relationshipType": k, "relatedSpdxElement": b }))
            .collect::<Vec<_>>(),
    });
    if !files.is_empty() {
        doc["files"] = json!(files.into_values().collect::<Vec<_>>());
    }
    Ok(doc)
}

/// The `sbom-complete` check: every expected package name (the drift
/// manifest's Debian packages, crates, distributions) that no package of
/// the SBOM carries. Empty: complete.
pub fn sbom_complete(sbom: &Value, expected: &[String]) -> Vec<String> {
    let names: BTreeSet<&str> = sbom["packages"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    let mut missing: Vec<String> = expected
        .iter()
        .filter(|e| !names.contains(e.as_str()))
        .cloned()
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sbom_inputs as sample;

    fn bytes(i: &SbomInputs) -> Vec<u8> {
        crate::oci::canonical_json(&sbom(i).unwrap()).unwrap().bytes
    }

    #[test]
    fn same_inputs_same_bytes_in_any_order() {
        let a = sample();
        let mut b = sample();
        b.debs.reverse();
        b.binaries[0].crates.reverse();
        assert_eq!(bytes(&a), bytes(&a));
        assert_eq!(bytes(&a), bytes(&b));
        let mut c = sample();
        c.debs[0].version = "2.36-9+deb12u14".into();
        assert_ne!(bytes(&a), bytes(&c), "an input change must show");
    }

    #[test]
    fn packages_carry_purls_checksums_and_licenses() {
        let doc = sbom(&sample()).unwrap();
        let find = |name: &str| -> Value {
            doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no package {name}"))
        };
        let libc = find("libc6");
        assert_eq!(
            libc["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=amd64"
        );
        assert_eq!(
            libc["checksums"][0]["checksumValue"],
            Digest::of(b"libc6").hex()
        );
        assert_eq!(
            find("libstdc++6")["SPDXID"],
            "SPDXRef-deb-libstdc..6-amd64-12.2.0-14.deb12u1"
        );
        assert_eq!(find("memchr")["licenseDeclared"], "Unlicense OR MIT");
        let hello_crate = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["SPDXID"] == "SPDXRef-crate-hello-0.1.0-ws")
            .cloned()
            .unwrap();
        assert_eq!(
            hello_crate["downloadLocation"],
            "git+https://git.example.com/platform/release-lane@0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let rels = doc["relationships"].as_array().unwrap();
        let has = |a: &str, k: &str, b: &str| {
            rels.iter().any(|r| {
                r["spdxElementId"] == a
                    && r["relationshipType"] == k
                    && r["relatedSpdxElement"] == b
            })
        };
        assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image"));
        assert!(has(
            "SPDXRef-Image",
            "CONTAINS",
            "SPDXRef-deb-libc6-amd64-2.36-9.deb12u13"
        ));
        assert!(has(
            "SPDXRef-File-.usr.local.bin.hello",
            "GENERATED_FROM",
            "SPDXRef-crate-hello-0.1.0-ws"
        ));
        assert!(has(
            "SPDXRef-File-.usr.local.bin.hello",
            "STATIC_LINK",
            "SPDXRef-crate-serde-1.0.228"
        ));
    }

    #[test]
    fn sbom_complete_names_every_missing_package() {
        let mut i = sample();
        let doc = sbom(&i).unwrap();
        let expected: Vec<String> = ["libc6", "tzdata", "serde", "Flask"]
            .map(String::from)
            .to_vec();
        assert_eq!(sbom_complete(&doc, &expected), Vec::<String>::new());
        i.debs.retain(|d| d.name != "tzdata" && d.name != "libc6");
        let doc = sbom(&i).unwrap();
        assert_eq!(sbom_complete(&doc, &expected), ["libc6", "tzdata"]);
    }
}
