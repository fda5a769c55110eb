//! `cargo xtask keygen`: an ECDSA P-256 key pair for signing the evidence
//! (the files are written by [`crate::adapters::keys`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::adapters::workspace::Workspace;

/// Make an ECDSA P-256 key pair for signing release evidence.
///
/// Writes release-signing.key (PKCS#8 PEM, mode 0600: keep it in the CI
/// secret store as LANE_SIGNING_KEY, never in the repository) and
/// release-signing.pub (SPKI PEM: add it to [signing] trusted_keys in
/// ci/release-policy.toml). Never overwrites an existing key.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the two files.
    #[arg(long, value_name = "DIR", default_value = "target/keys")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<ExitCode> {
    let Args { out, json } = args;
    let dir = if out.is_absolute() {
        out
    } else {
        ws.root.join(out)
    };
    let k = crate::adapters::keys::keygen(&dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&k)?);
    } else {
        println!(
            "private key {} (mode 0600): store it in the CI secret store as LANE_SIGNING_KEY; never commit it\n\
             public key  {} (keyid {})\n\n\
             To trust it, add it to [signing] trusted_keys in ci/release-policy.toml:\n\n\
             [signing]\ntrusted_keys = [\n\"\"\"\n{}\"\"\",\n]",
            k.private_key.display(),
            k.public_key.display(),
            k.keyid,
            k.public_pem
        );
    }
    Ok(ExitCode::SUCCESS)
}
