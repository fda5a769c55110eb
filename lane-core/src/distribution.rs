//! Publishing by digest, as values: the image an OCI layout holds
//! ([`LocalImage`], parsed from bytes), what a store reported back
//! ([`Observed`], [`TagCheck`]) and the identity cross-check rules
//! ([`check_digest`], [`check_tag`]): a digest header is never trusted on its
//! own, the fetched bytes are hashed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::id::{Digest, Repository, Tag};
use crate::layer::sha256;

/// A blob the manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// An image as its OCI layout holds it: the manifest's exact bytes and the
/// blobs it names (layers, then config).
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub name: String,
    pub layout: PathBuf,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub blobs: Vec<BlobRef>,
}

impl LocalImage {
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.join(digest.blob_path())
    }

    /// Pure: from `index.json` and a reader of blobs by digest.
    pub fn parse(
        name: &str,
        layout: &Path,
        index: &[u8],
        read_blob: &dyn Fn(&Digest) -> Result<Vec<u8>>,
    ) -> Result<LocalImage> {
        crate::oci::check_size(
            "index.json",
            index.len() as u64,
            crate::oci::MAX_MANIFEST_BYTES,
        )?;
        let index: serde_json::Value =
            serde_json::from_slice(index).context("index.json is not JSON")?;
        let entry = index["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .ok_or_else(|| anyhow!("index.json lists no manifest"))?;
        let digest: Digest = entry["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("index.json's manifest has no digest"))?
            .parse()
            .context("index.json's manifest")?;
        let media_type = entry["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let manifest = read_blob(&digest)?;
        if !digest.matches(&manifest) {
            bail!(
                "the layout's manifest blob hashes to {}, not {digest}; rebuild with cargo xtask build {name}",
                sha256(&manifest)
            );
        }
        crate::oci::check_size(
            "the manifest",
            manifest.len() as u64,
            crate::oci::MAX_MANIFEST_BYTES,
        )?;
        let m: serde_json::Value =
            serde_json::from_slice(&manifest).context("the manifest is not JSON")?;
        let descriptor = |d: &serde_json::Value| -> Result<BlobRef> {
            Ok(BlobRef {
                digest: d["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .context("the manifest names a blob without a valid sha256 digest")?,
                size: d["size"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("the manifest names a blob without a size"))?,
                media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
            })
        };
        let mut blobs = Vec::new();
        for l in m["layers"].as_array().into_iter().flatten() {
            blobs.push(descriptor(l)?);
        }
        blobs.push(descriptor(&m["config"])?);
        Ok(LocalImage {
            name: name.to_string(),
            layout: layout.to_path_buf(),
            manifest,
            manifest_digest: digest,
            manifest_media_type: media_type,
            blobs,
        })
    }
}

/// What moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlobStats {
    pub uploaded: u64,
    pub skipped: u64,
    pub mounted: u64,
    pub bytes_uploaded: u64,
}

/// What the destination said after the manifest was pushed by digest.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `Docker-Content-Digest` of the PUT response.
    pub pushed_digest_header: Option<String>,
    /// `Docker-Content-Digest` of the GET-by-digest response.
    pub fetched_digest_header: Option<String>,
    /// sha256 of the bytes fetched by digest.
    pub fetched_sha256: String,
    /// Every blob the manifest names, with the size the destination reports.
    pub blobs: Vec<(BlobRef, Option<u64>)>,
}

/// One tag, read back after it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct TagCheck {
    pub tag: String,
    pub pushed_digest_header: Option<String>,
    pub fetched_digest_header: Option<String>,
    /// sha256 of the bytes the tag resolves to.
    pub resolved_sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CrossCheck {
    pub ok: bool,
    pub pushed_digest_header: Option<String>,
    pub fetched_digest_header: Option<String>,
    pub fetched_sha256: String,
    pub blobs_verified: u64,
    pub tags: Vec<TagCheck>,
}

/// Every failed identity check of a manifest pushed as `digest`; empty
/// when all hold. A missing header is not trusted: the fetched bytes are
/// hashed instead, and that hash must equal `digest`.
pub fn check_digest(digest: &Digest, o: &Observed) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(h) = &o.pushed_digest_header
        && h != digest
    {
        failures.push(format!(
            "the registry reported Docker-Content-Digest {h} for the manifest pushed as {digest}"
        ));
    }
    if let Some(h) = &o.fetched_digest_header
        && h != digest
    {
        failures.push(format!(
            "the manifest fetched by digest came with Docker-Content-Digest {h}, not {digest}"
        ));
    }
    if o.fetched_sha256 != *digest {
        failures.push(format!(
            "the manifest fetched by digest hashes to {}, not {digest} (the registry serves other bytes than were pushed)",
            o.fetched_sha256
        ));
    }
    for (b, found) in &o.blobs {
        match found {
            None => failures.push(format!(
                "blob {} named by the manifest is missing",
                b.digest
            )),
            Some(s) if *s != b.size => failures.push(format!(
                "blob {} has {s} bytes at the destination, the manifest says {}",
                b.digest, b.size
            )),
            Some(_) => {}
        }
    }
    failures
}

/// The refusal of a tag that did not read back as `digest` (`location` is
/// `HOST/REPO:TAG` or `local/REPO:TAG`), with every failed check.
pub fn tag_refusal(location: &str, digest: &Digest, failures: &[String]) -> String {
    format!(
        "identity cross-check failed for tag {location}:\n  - {}\n(the tag was written with the bytes of {digest}, which passed the check by digest, but reads back differently; another writer may have moved it: check the store and publish again)",
        failures.join("\n  - ")
    )
}

/// Every failed check of a tag that should resolve to `digest`.
pub fn check_tag(digest: &Digest, t: &TagCheck) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, h) in [
        ("the tag's PUT", &t.pushed_digest_header),
        ("the tag's GET", &t.fetched_digest_header),
    ] {
        if let Some(h) = h
            && h != digest
        {
            failures.push(format!(
                "{what} reported Docker-Content-Digest {h}, not {digest}"
            ));
        }
    }
    if t.resolved_sha256 != *digest {
        failures.push(format!(
            "tag {} resolves to {}, not {digest}",
            t.tag, t.resolved_sha256
        ));
    }
    failures
}

/// One published image, as `publish --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub image: String,
    /// `host[:port]`, or null for the local store.
    pub registry: Option<String>,
    pub repository: String,
    /// Where the digest can be fetched: `host/repo@digest` or `DIR@digest`.
    pub reference: String,
    pub digest: Digest,
    pub tags: Vec<Tag>,
    pub blobs: BlobStats,
    pub cross_check: CrossCheck,
}

/// One built image, as `build --json` prints it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuiltImage {
    pub name: String,
    pub repository: Repository,
    pub tags: Vec<Tag>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layout: PathBuf,
    pub layers: Vec<BuiltLayer>,
    pub cache: CacheStats,
    /// The key of the image's inputs, when the tree was clean (git's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_key: Option<Digest>,
    /// Not built: the target already held this digest, built from the same
    /// input key, with reusable evidence (`layout` holds only its manifest
    /// and config, read from the target).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuiltLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// What the action cache did for one image.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    pub hits: u64,
    /// Layers encoded and compressed here (neither cache had them).
    pub misses: u64,
    /// Layers taken from the shared cache in a registry, verified.
    #[serde(default)]
    pub remote_hits: u64,
    /// Bytes of packaged file content read from disk.
    pub bytes_read: u64,
    /// Bytes of tar stream compressed.
    pub bytes_compressed: u64,
}

/// A tag this run moved reads back naming another digest, by the store's
/// header and by the hash of the bytes alike: another writer moved it after
/// this run did (a registry has no compare-and-swap). Not a lying store:
/// the store answered consistently; the tag is simply not this run's now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overtaken {
    pub tag: String,
    pub ours: Digest,
    pub now: Digest,
}

impl std::fmt::Display for Overtaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tag {} was moved to {} by another writer right after this run moved it to {}",
            self.tag, self.now, self.ours
        )
    }
}

impl std::error::Error for Overtaken {}

/// [`Overtaken`] when a tag's read-back is consistent (the fetched header,
/// if any, and the hash of the fetched bytes name the same digest) but
/// names another digest than `ours`.
pub fn overtaken(ours: &Digest, check: &TagCheck) -> Option<Overtaken> {
    let now: Digest = check.resolved_sha256.parse().ok()?;
    let header_agrees = check
        .fetched_digest_header
        .as_deref()
        .is_none_or(|h| h == now.as_str());
    (now != *ours && header_agrees).then(|| Overtaken {
        tag: check.tag.clone(),
        ours: ours.clone(),
        now,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_consistent_other_digest_is_overtaken_and_a_lie_is_not() {
        let ours = crate::layer::sha256(b"ours");
        let theirs = crate::layer::sha256(b"theirs");
        let check = |header: Option<&Digest>, hash: &Digest| TagCheck {
            tag: "v1".into(),
            pushed_digest_header: Some(ours.to_string()),
            fetched_digest_header: header.map(Digest::to_string),
            resolved_sha256: hash.to_string(),
        };
        let o = overtaken(&ours, &check(Some(&theirs), &theirs)).unwrap();
        assert_eq!(
            (o.now.clone(), o.ours.clone()),
            (theirs.clone(), ours.clone())
        );
        assert!(o.to_string().contains("another writer"));
        assert!(overtaken(&ours, &check(None, &theirs)).is_some());
        // Header and bytes disagree: a lying store, not another writer.
        assert!(overtaken(&ours, &check(Some(&ours), &theirs)).is_none());
        // Ours: nothing to report.
        assert!(overtaken(&ours, &check(Some(&ours), &ours)).is_none());
    }

    use super::*;

    fn blob(d: char, size: u64) -> BlobRef {
        BlobRef {
            digest: format!("sha256:{}", d.to_string().repeat(64))
                .parse()
                .unwrap(),
            size,
            media_type: String::new(),
        }
    }

    #[test]
    fn cross_check_reports_every_failure() {
        let good = sha256(b"m").to_string();
        let ok = Observed {
            pushed_digest_header: Some(good.clone()),
            fetched_digest_header: None,
            fetched_sha256: good.clone(),
            blobs: vec![(blob('a', 3), Some(3))],
        };
        assert!(check_digest(&sha256(b"m"), &ok).is_empty());
        let bad = Observed {
            pushed_digest_header: Some(sha256(b"lie").to_string()),
            fetched_digest_header: Some(sha256(b"lie").to_string()),
            fetched_sha256: sha256(b"other").to_string(),
            blobs: vec![(blob('a', 3), None), (blob('b', 3), Some(4))],
        };
        let f = check_digest(&sha256(b"m"), &bad);
        assert_eq!(f.len(), 5, "{f:#?}");
        assert!(f[0].contains("reported Docker-Content-Digest"));
        assert!(f[2].contains("hashes to"));
        assert!(f[3].contains("missing") && f[4].contains("4 bytes"));
    }

    #[test]
    fn tag_check_needs_the_digest() {
        let good = sha256(b"m").to_string();
        let t = TagCheck {
            tag: "v1".into(),
            pushed_digest_header: None,
            fetched_digest_header: Some(good.clone()),
            resolved_sha256: sha256(b"x").to_string(),
        };
        let f = check_tag(&sha256(b"m"), &t);
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("tag v1 resolves to"));
    }

    #[test]
    fn layout_parse_rehashes_the_manifest() {
        let manifest = br#"{"schemaVersion":2,"config":{"digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":2,"mediaType":"c"},"layers":[{"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":5,"mediaType":"l"}]}"#.to_vec();
        let d = sha256(&manifest);
        let index = format!(
            r#"{{"manifests":[{{"digest":"{d}","mediaType":"application/vnd.oci.image.manifest.v1+json"}}]}}"#
        );
        let m = manifest.clone();
        let img = LocalImage::parse("x", Path::new("/l"), index.as_bytes(), &move |_| {
            Ok(m.clone())
        })
        .unwrap();
        assert_eq!(img.manifest_digest, d);
        assert_eq!(img.blobs.len(), 2);
        assert_eq!(img.blobs[0].size, 5);
        assert_eq!(img.blobs[1].media_type, "c");
        let err = LocalImage::parse("x", Path::new("/l"), index.as_bytes(), &|_| {
            Ok(b"tampered".to_vec())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("hashes to"));
        // A blob digest in uppercase hex is refused by the one parser.
        let upper = String::from_utf8(manifest)
            .unwrap()
            .replace(&"a".repeat(64), &"A".repeat(64))
            .into_bytes();
        let d = sha256(&upper);
        let index = format!(r#"{{"manifests":[{{"digest":"{d}"}}]}}"#);
        let err = LocalImage::parse("x", Path::new("/l"), index.as_bytes(), &move |_| {
            Ok(upper.clone())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("lowercase hex"), "{err:#}");
    }
}

/// Hostile OCI layouts (docs/fault-matrix-parsers.md): `index.json` and the manifest it
/// names, arbitrary and mutated (the index naming the mutated manifest's
/// own digest, so the manifest parser sees it). No panic, a clear error.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated};
    use proptest::prelude::*;

    const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":2,"mediaType":"c"},"layers":[{"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":5,"mediaType":"l"}]}"#;

    fn check(index: &[u8], manifest: Vec<u8>) -> Result<(), TestCaseError> {
        let r = LocalImage::parse("x", Path::new("/l"), index, &move |_| Ok(manifest.clone()));
        if let Err(e) = r {
            hostile::clear_error(&e, "")?;
        }
        Ok(())
    }

    #[test]
    fn an_oversized_manifest_is_refused_naming_the_cap() {
        let mut big = MANIFEST.as_bytes().to_vec();
        big.resize(crate::oci::MAX_MANIFEST_BYTES as usize + 1, b' ');
        let index = format!(r#"{{"manifests":[{{"digest":"{}"}}]}}"#, sha256(&big));
        let e = LocalImage::parse("x", Path::new("/l"), index.as_bytes(), &move |_| {
            Ok(big.clone())
        })
        .unwrap_err();
        assert!(e.to_string().contains("more than the 4194304"), "{e}");
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn layout_arbitrary(index in hostile::bytes(256), manifest in hostile::bytes(256)) {
            check(&index, manifest)?;
        }

        #[test]
        fn layout_mutated(manifest in mutated(MANIFEST.as_bytes().to_vec()), index_mutation in mutated(b"{\"manifests\":[{\"digest\":\"DIGEST\"}]}".to_vec())) {
            let index = format!(r#"{{"manifests":[{{"digest":"{}"}}]}}"#, sha256(&manifest));
            check(index.as_bytes(), manifest.clone())?;
            let index = String::from_utf8_lossy(&index_mutation).replace("DIGEST", sha256(&manifest).as_str());
            check(index.as_bytes(), manifest)?;
        }
    }
}
