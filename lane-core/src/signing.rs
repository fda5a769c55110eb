//! Signing and checking DSSE envelopes with ECDSA P-256 keys, as cosign
//! does: the signature covers [`evidence::pae`] of the payload type and the
//! payload, hashed with SHA-256; `sig` is the ASN.1 DER signature in base64;
//! `keyid` is the hex sha256 of the public key's SubjectPublicKeyInfo DER.
//!
//! Private keys are PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), public keys
//! SPKI PEM (`-----BEGIN PUBLIC KEY-----`): `cosign verify-blob --key`,
//! `openssl pkeyutl` and friends read both. Pure except [`load_signer`] and
//! [`keygen`], which read the environment / write files.

use anyhow::Result;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde_json::Value;

use crate::evidence;

/// Environment variable naming a file that holds the PEM signing key.
pub const ENV_KEY_FILE: &str = "LANE_SIGNING_KEY_FILE";
/// Environment variable holding the PEM signing key itself (CI secret stores).
pub const ENV_KEY: &str = "LANE_SIGNING_KEY";

/// A private key the lane signs evidence with.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    /// Hex sha256 of the public key's SPKI DER.
    pub keyid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.keyid)
    }
}

impl Signer {
    /// Parses a PKCS#8 PEM P-256 private key. `origin` names where it came
    /// from, for messages (never the key itself).
    pub fn from_pem(pem: &str, origin: &str) -> Result<Signer> {
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
            anyhow::anyhow!(
                "{origin} is not a PKCS#8 PEM ECDSA P-256 private key ({e}); make one with `cargo xtask keygen`"
            )
        })?;
        let keyid = keyid(key.verifying_key())?;
        Ok(Signer { key, keyid })
    }

    /// The public key as SPKI PEM, as `[signing] trusted_keys` holds it.
    pub fn public_pem(&self) -> Result<String> {
        public_pem(self.key.verifying_key())
    }

    /// `(keyid, base64 DER signature)` over the DSSE PAE of the payload.
    pub fn sign(&self, payload_type: &str, payload: &[u8]) -> (String, String) {
        let sig: DerSignature = self.key.sign(&evidence::pae(payload_type, payload));
        (self.keyid.clone(), evidence::base64(sig.as_bytes()))
    }
}

/// The DSSE envelope of an in-toto statement, signed when a signer is given.
pub fn envelope(payload: &[u8], signer: Option<&Signer>) -> Value {
    let sigs: Vec<(String, String)> = signer
        .map(|s| s.sign(evidence::PAYLOAD_INTOTO, payload))
        .into_iter()
        .collect();
    evidence::envelope(payload, &sigs)
}

fn keyid(key: &VerifyingKey) -> Result<String> {
    let der = key
        .to_public_key_der()
        .map_err(|e| anyhow::anyhow!("encoding a public key: {e}"))?;
    Ok(crate::layer::sha256(der.as_bytes()).hex().to_string())
}

fn public_pem(key: &VerifyingKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding a public key: {e}"))
}

/// A public key trusted to sign evidence.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub keyid: String,
    key: VerifyingKey,
}

/// Parses the policy's `[signing] trusted_keys` (SPKI PEM). Returns the keys
/// and one message per entry that is not a P-256 public key.
pub fn trusted_keys(pems: &[String]) -> (Vec<TrustedKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for (i, pem) in pems.iter().enumerate() {
        match VerifyingKey::from_public_key_pem(pem.trim()) {
            Ok(key) => match keyid(&key) {
                Ok(keyid) => keys.push(TrustedKey { keyid, key }),
                Err(e) => bad.push(format!("signing.trusted_keys[{i}]: {e:#}")),
            },
            Err(e) => bad.push(format!(
                "signing.trusted_keys[{i}] is not a PEM ECDSA P-256 public key ({e}); paste the .pub file `cargo xtask keygen` wrote"
            )),
        }
    }
    (keys, bad)
}

/// How an envelope's signatures check out against the trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Signed by this trusted key.
    Trusted(String),
    /// No signatures at all.
    Unsigned,
    /// Signatures present, none by a trusted key that verifies. Each entry
    /// says why one signature was not accepted.
    Untrusted(Vec<String>),
}

/// Checks the DSSE signatures of `envelope` (parsed JSON) over its payload.
pub fn check_envelope(envelope: &Value, trusted: &[TrustedKey]) -> SignatureCheck {
    let payload_type = envelope["payloadType"].as_str().unwrap_or_default();
    let payload = match envelope["payload"].as_str().and_then(evidence::unbase64) {
        Some(p) => p,
        None => return SignatureCheck::Untrusted(vec!["the payload is not base64".into()]),
    };
    let sigs = envelope["signatures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if sigs.is_empty() {
        return SignatureCheck::Unsigned;
    }
    let message = evidence::pae(payload_type, &payload);
    let mut why = Vec::new();
    for s in &sigs {
        let keyid = s["keyid"].as_str().unwrap_or_default();
        let sig = match s["sig"]
            .as_str()
            .and_then(evidence::unbase64)
            .and_then(|b| DerSignature::from_bytes(&b).ok())
        {
            Some(sig) => sig,
            None => {
                why.push(format!(
                    "signature by key {keyid:?} is not base64 ASN.1 DER"
                ));
                continue;
            }
        };
        // The keyid is a hint; every trusted key is tried, so a forged keyid
        // cannot make a signature pass or a good one fail.
        match trusted
            .iter()
            .find(|k| k.key.verify(&message, &sig).is_ok())
        {
            Some(k) => return SignatureCheck::Trusted(k.keyid.clone()),
            None if trusted.iter().any(|k| k.keyid == keyid) => why.push(format!(
                "signature claiming trusted key {keyid} does not verify (payload or signature altered)"
            )),
            None => why.push(format!("signed by key {keyid:?}, which the policy does not trust")),
        }
    }
    SignatureCheck::Untrusted(why)
}

/// A freshly generated key pair as PEM text: what `cargo xtask keygen`
/// writes to disk.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub private_pem: String,
    pub public_pem: String,
    pub keyid: String,
}

/// Generates an ECDSA P-256 key pair from the system's random number
/// generator.
pub fn generate() -> Result<GeneratedKey> {
    let key = SigningKey::try_generate()
        .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    Ok(GeneratedKey {
        private_pem: pem.to_string(),
        public_pem: public_pem(key.verifying_key())?,
        keyid: keyid(key.verifying_key())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::signer;

    #[test]
    fn signed_envelope_verifies_and_tampering_is_caught() {
        let s = signer(7);
        let (trusted, bad) = trusted_keys(&[s.public_pem().unwrap()]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(trusted[0].keyid, s.keyid);
        assert_eq!(s.keyid.len(), 64);

        let env = envelope(b"{\"a\":1}", Some(&s));
        assert_eq!(
            check_envelope(&env, &trusted),
            SignatureCheck::Trusted(s.keyid.clone())
        );

        let mut altered = env.clone();
        altered["payload"] = Value::String(evidence::base64(b"{\"a\":2}"));
        assert!(matches!(
            check_envelope(&altered, &trusted),
            SignatureCheck::Untrusted(w) if w[0].contains("does not verify")
        ));

        let other = signer(9);
        let forged = envelope(b"{\"a\":1}", Some(&other));
        assert!(matches!(
            check_envelope(&forged, &trusted),
            SignatureCheck::Untrusted(w) if w[0].contains("does not trust")
        ));
        assert_eq!(
            check_envelope(&envelope(b"{}", None), &trusted),
            SignatureCheck::Unsigned
        );
    }

    #[test]
    fn trusted_keys_explain_bad_entries() {
        let (_, bad) = trusted_keys(&["garbage".into()]);
        assert!(
            bad[0].starts_with("signing.trusted_keys[0] is not"),
            "{bad:?}"
        );
    }
}

/// Hostile DSSE envelopes (docs/fault-matrix-parsers.md): attached evidence read from a
/// store, arbitrary and mutated (bytes of a signed envelope). No panic; an
/// envelope is trusted only if a trusted key's signature verifies, and a
/// tampered payload never is.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated};
    use crate::testing::signer;
    use crate::verify::{Envelope, Evidence, VerifyOptions, check};
    use proptest::prelude::*;

    fn signed() -> Vec<u8> {
        let statement = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"x","predicate":{}}"#;
        serde_json::to_vec(&envelope(statement, Some(&signer(1)))).unwrap()
    }

    fn check_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
        let (trusted, _) = trusted_keys(&[signer(1).public_pem().unwrap()]);
        let original: Value = serde_json::from_slice(&signed()).unwrap();
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            if let SignatureCheck::Trusted(_) = check_envelope(&v, &trusted) {
                // Only the payload and its type are signed: those must be
                // the original ones.
                prop_assert_eq!(
                    &v["payload"].as_str().and_then(evidence::unbase64),
                    &original["payload"].as_str().and_then(evidence::unbase64)
                );
                prop_assert_eq!(&v["payloadType"], &original["payloadType"]);
            }
            let policy = crate::gates::Policy {
                trusted_keys: vec![signer(1).public_pem().unwrap()],
                ..Default::default()
            };
            let evidence = Evidence {
                envelopes: vec![Envelope {
                    artifact: "sha256:x".into(),
                    annotated_predicate: None,
                    envelope: v,
                }],
                ..Default::default()
            };
            let verdict = check("sha256:00", &evidence, &policy, VerifyOptions::default());
            prop_assert!(!verdict.verified);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn dsse_arbitrary_bytes(bytes in hostile::bytes(512)) {
            check_bytes(&bytes)?;
        }

        #[test]
        fn dsse_mutated(bytes in mutated(signed())) {
            check_bytes(&bytes)?;
        }

        #[test]
        fn trusted_keys_arbitrary(pem in any::<String>()) {
            let (keys, bad) = trusted_keys(&[pem]);
            prop_assert_eq!(keys.len() + bad.len(), 1);
        }
    }
}
