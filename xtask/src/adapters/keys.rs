//! Signing keys on disk and in the environment: the I/O half of
//! `lane_core::signing`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lane_core::signing::{self, ENV_KEY, ENV_KEY_FILE, Signer};

/// Finds the signing key: `--signing-key FILE`, else `$LANE_SIGNING_KEY_FILE`,
/// else `$LANE_SIGNING_KEY` (the PEM itself). `None` when none is given.
pub fn load_signer(
    flag: Option<&Path>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Signer>> {
    let file = flag.map(Path::to_path_buf).or_else(|| {
        get(ENV_KEY_FILE)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = file {
        let pem = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the signing key {}; make one with `cargo xtask keygen`",
                path.display()
            )
        })?;
        return Signer::from_pem(&pem, &format!("signing key {}", path.display())).map(Some);
    }
    match get(ENV_KEY).filter(|s| !s.trim().is_empty()) {
        Some(pem) => Signer::from_pem(&pem, &format!("${ENV_KEY}")).map(Some),
        None => Ok(None),
    }
}

/// What `cargo xtask keygen` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyPair {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub keyid: String,
    pub public_pem: String,
}

/// Makes a new key pair in `dir`: `release-signing.key` (PKCS#8 PEM, mode
/// 0600) and `release-signing.pub` (SPKI PEM). Refuses to overwrite.
pub fn keygen(dir: &Path) -> Result<KeyPair> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let private_key = dir.join("release-signing.key");
    let public_key = dir.join("release-signing.pub");
    for p in [&private_key, &public_key] {
        if p.exists() {
            bail!(
                "{} already exists; keygen never overwrites a key (move it away or pass --out DIR)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = signing::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_key)
        .with_context(|| format!("creating {}", private_key.display()))?;
    f.write_all(key.private_pem.as_bytes())?;
    f.sync_all()?;
    std::fs::write(&public_key, &key.public_pem)
        .with_context(|| format!("writing {}", public_key.display()))?;
    Ok(KeyPair {
        private_key,
        public_key,
        keyid: key.keyid,
        public_pem: key.public_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_environment_and_bad_keys_are_explained() {
        let pem = signing::generate().unwrap();
        let got = load_signer(None, &|k| (k == ENV_KEY).then(|| pem.private_pem.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(got.keyid, pem.keyid);
        assert!(load_signer(None, &|_| None).unwrap().is_none());
        let e = load_signer(None, &|k| (k == ENV_KEY).then(|| "nope".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("$LANE_SIGNING_KEY is not a PKCS#8 PEM"), "{e}");
    }
}
