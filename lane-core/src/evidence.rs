//! Evidence as OCI 1.1 artifacts attached to an image digest. Pure.
//!
//! Each statement is wrapped in a DSSE envelope and stored as the single layer
//! of an artifact manifest whose `subject` is the image manifest. Registries
//! with the referrers API index it themselves; for those without (the
//! Distribution registry 2.8), the lane maintains the referrers tag fallback:
//! an image index tagged `sha256-<hex of the subject>` listing every artifact.

use serde_json::{Value, json};

use crate::oci::{Blob, canonical_json};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MEDIA_DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const PAYLOAD_INTOTO: &str = "application/vnd.in-toto+json";
/// artifactType of the lane's release record.
pub const MEDIA_RELEASE_RECORD: &str = "application/vnd.release-lane.record.v1+json";
/// Annotation naming the predicate type of an attached statement.
pub const ANNOTATION_PREDICATE: &str = "dev.release-lane.predicate-type";

/// The OCI empty descriptor's content: `{}`.
pub fn empty_config() -> Blob {
    Blob {
        bytes: b"{}".to_vec(),
        digest: crate::layer::sha256(b"{}"),
    }
}

/// DSSE pre-authentication encoding, the bytes a signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope around an in-toto statement. `signatures` are
/// `(keyid, base64 signature)` pairs over [`pae`].
pub fn envelope(payload: &[u8], signatures: &[(String, String)]) -> Value {
    json!({
        "payloadType": PAYLOAD_INTOTO,
        "payload": base64(payload),
        "signatures": signatures.iter().map(|(k, s)| json!({"keyid": k, "sig": s})).collect::<Vec<_>>(),
    })
}

/// An artifact ready to push: the manifest and the blobs it names.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub artifact_type: String,
    pub manifest: Blob,
    /// Config (empty) and the one layer.
    pub blobs: Vec<(String, Blob)>,
    pub annotations: Vec<(String, String)>,
}

/// Builds an artifact manifest carrying `content` (of `media_type`) for the
/// image manifest `subject_digest` of `subject_size` bytes.
pub fn artifact(
    artifact_type: &str,
    media_type: &str,
    content: Blob,
    subject_digest: &str,
    subject_size: u64,
    annotations: &[(&str, &str)],
) -> anyhow::Result<Artifact> {
    let config = empty_config();
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": MEDIA_EMPTY, "digest": config.digest, "size": config.size(), "data": "e30=" },
        "layers": [{ "mediaType": media_type, "digest": content.digest, "size": content.size() }],
        "subject": { "mediaType": MEDIA_MANIFEST, "digest": subject_digest, "size": subject_size },
        "annotations": ann,
    });
    Ok(Artifact {
        artifact_type: artifact_type.to_string(),
        manifest: canonical_json(&manifest)?,
        blobs: vec![
            (MEDIA_EMPTY.to_string(), config),
            (media_type.to_string(), content),
        ],
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

/// The referrers index with `artifact` added (replacing an entry with the
/// same digest). `existing` is the current index at the fallback tag, if any.
pub fn add_referrer(existing: Option<&[u8]>, artifact: &Artifact) -> anyhow::Result<Blob> {
    let mut manifests: Vec<Value> = existing
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    manifests.retain(|m| m["digest"] != artifact.manifest.digest.as_str());
    let ann: serde_json::Map<String, Value> = artifact
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    manifests.push(json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": artifact.manifest.digest,
        "size": artifact.manifest.size(),
        "artifactType": artifact.artifact_type,
        "annotations": ann,
    }));
    canonical_json(&json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests }))
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(unbase64(&base64(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"{}"), "e30=");
    }

    #[test]
    fn pae_matches_the_dsse_spec() {
        // Example from the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn artifact_names_its_subject_and_index_accumulates() {
        let content = canonical_json(&json!({"a": 1})).unwrap();
        let subject = format!("sha256:{}", "c".repeat(64));
        let a = artifact(
            MEDIA_DSSE,
            MEDIA_DSSE,
            content,
            &subject,
            123,
            &[(ANNOTATION_PREDICATE, "x")],
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(m["subject"]["digest"], subject.as_str());
        assert_eq!(m["subject"]["size"], 123);
        assert_eq!(m["config"]["digest"], empty_config().digest.as_str());
        let i1 = add_referrer(None, &a).unwrap();
        let b = artifact(
            MEDIA_DSSE,
            MEDIA_DSSE,
            canonical_json(&json!({"b": 1})).unwrap(),
            &subject,
            123,
            &[],
        )
        .unwrap();
        let i2 = add_referrer(Some(&i1.bytes), &b).unwrap();
        let again = add_referrer(Some(&i2.bytes), &b).unwrap();
        let idx: Value = serde_json::from_slice(&again.bytes).unwrap();
        assert_eq!(idx["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(
            subject
                .parse::<crate::id::Digest>()
                .unwrap()
                .fallback_tag()
                .as_str(),
            format!("sha256-{}", "c".repeat(64))
        );
        assert_eq!(
            empty_config().digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}

/// A hostile existing referrers index (docs/fault-matrix-parsers.md): whatever the store
/// holds at the fallback tag, adding a referrer gives a valid index.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated};
    use proptest::prelude::*;

    fn artifact() -> Artifact {
        super::artifact(
            MEDIA_DSSE,
            MEDIA_DSSE,
            Blob {
                bytes: b"{}".to_vec(),
                digest: crate::layer::sha256(b"{}"),
            },
            crate::layer::sha256(b"subject").as_str(),
            10,
            &[(ANNOTATION_PREDICATE, "p")],
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn referrers_index_arbitrary_and_mutated(bytes in hostile::bytes(512), m in mutated(add_referrer(None, &artifact()).unwrap().bytes)) {
            for existing in [bytes, m] {
                let index = add_referrer(Some(&existing), &artifact()).unwrap();
                let v: Value = serde_json::from_slice(&index.bytes).unwrap();
                prop_assert!(v["manifests"].as_array().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}
