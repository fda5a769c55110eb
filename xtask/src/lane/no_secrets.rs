//! The `no-secrets` gate (issue 27): every layer of the candidate, read
//! once from its layout before anything is published, scanned for
//! high-confidence secrets (`lane_core::secret_scan`): PEM private keys,
//! `Authorization` header values, GitHub and AWS access-key formats, and
//! this run's own signing key and registry password. A finding rejects the
//! release naming layer, path and kind, never the secret. Paths the image
//! allows on purpose (`[secrets] allow` in image.toml, e.g. test fixtures)
//! are not scanned, and are listed in the gate's evidence and the
//! provenance.

use std::io::Read;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use lane_core::distribution::BuiltImage;
use lane_core::gates::{GateName, GateResult};
use lane_core::secret_scan::{self, FileScan, SecretKind};
use lane_core::spec::ImageSpec;

/// The secrets this run holds, to find verbatim: the registry password
/// and the signing key's first line of base64 (from the environment as the
/// lane took it at start).
pub fn known_secrets() -> Vec<(SecretKind, Vec<u8>)> {
    let mut values = Vec::new();
    if let Some(p) = crate::adapters::secrets::var(crate::adapters::registry::ENV_PASSWORD) {
        values.push((SecretKind::RegistryPassword, p));
    }
    if let Some(pem) = crate::adapters::secrets::var(lane_core::signing::ENV_KEY)
        && let Some(line) = pem
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("-----"))
    {
        values.push((SecretKind::SigningKey, line.to_string()));
    }
    secret_scan::known(values)
}

/// One finding: where, and what kind (never the value).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub layer: String,
    pub path: String,
    pub kind: SecretKind,
}

/// The gate's result for `image`.
pub fn gate(spec: &ImageSpec, image: &BuiltImage, known: &[(SecretKind, Vec<u8>)]) -> GateResult {
    let allowed: Vec<String> = spec.secrets_allow.iter().map(|p| p.to_string()).collect();
    match scan_image(image, &allowed, known) {
        Ok((findings, files, bytes)) => {
            let summary = if findings.is_empty() {
                format!(
                    "{files} files ({bytes} bytes) scanned, no secret found{}",
                    if allowed.is_empty() {
                        String::new()
                    } else {
                        format!("; allowed by image.toml: {}", allowed.join(", "))
                    }
                )
            } else {
                findings
                    .iter()
                    .map(|f| format!("{} in layer {} at {}", f.kind.as_str(), f.layer, f.path))
                    .collect::<Vec<_>>()
                    .join("; ")
                    + " (remove the file from the image, or allow its path on purpose: [secrets] allow in image.toml)"
            };
            GateResult::check(
                GateName::NoSecrets,
                findings.is_empty(),
                summary,
                json!({
                    "findings": findings,
                    "allowed": allowed,
                    "files_scanned": files,
                    "bytes_scanned": bytes,
                }),
            )
        }
        Err(e) => GateResult::failed(
            GateName::NoSecrets,
            format!("the layers could not be scanned: {e:#}"),
            Value::Null,
        ),
    }
}

/// Every regular file of every layer of the layout, scanned.
fn scan_image(
    image: &BuiltImage,
    allowed: &[String],
    known: &[(SecretKind, Vec<u8>)],
) -> Result<(Vec<Finding>, u64, u64)> {
    let layout = crate::adapters::layout::Layout::at(&image.name, &image.layout);
    let (_, manifest) = layout.manifest()?;
    let (mut findings, mut files, mut bytes) = (Vec::new(), 0u64, 0u64);
    for l in manifest["layers"].as_array().into_iter().flatten() {
        let digest = lane_core::store::parse_digest(&l["digest"], "a layer digest")?;
        let media = l["mediaType"].as_str().unwrap_or_default();
        let file = std::fs::File::open(layout.blob_path(&digest))
            .with_context(|| format!("opening layer {digest}"))?;
        let reader: Box<dyn Read> = if media.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        } else if media.ends_with("tar") {
            Box::new(std::io::BufReader::new(file))
        } else {
            bail!("layer {digest} has media type {media}, which the scan cannot read");
        };
        let mut archive = tar::Archive::new(reader);
        let mut buf = vec![0u8; 1 << 16];
        for entry in archive
            .entries()
            .with_context(|| format!("reading layer {digest}"))?
        {
            let mut entry = entry.with_context(|| format!("reading layer {digest}"))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = format!(
                "/{}",
                entry
                    .path()
                    .map(|p| p.to_string_lossy().trim_start_matches("./").to_string())
                    .unwrap_or_default()
            );
            if allowed.iter().any(|a| a == &path) {
                continue;
            }
            let mut scan = FileScan::new(known);
            loop {
                let n = entry
                    .read(&mut buf)
                    .with_context(|| format!("reading {path} in layer {digest}"))?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                scan.feed(&buf[..n]);
            }
            files += 1;
            for kind in scan.finish() {
                findings.push(Finding {
                    layer: digest.to_string(),
                    path: path.clone(),
                    kind,
                });
            }
        }
    }
    Ok((findings, files, bytes))
}
