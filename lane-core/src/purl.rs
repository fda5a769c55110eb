//! Package URLs (purl) of the artifacts that go into an image: Debian
//! packages, Rust crates, Python distributions, OCI base images. Used by the
//! SLSA provenance (`resolvedDependencies[].uri`) and the SBOM (`externalRefs`).
//! Encoding is the `packageurl` crate's (percent-encoding, qualifier order).

use anyhow::{Context, Result};
use packageurl::PackageUrl;

use crate::id::Digest;

fn render(p: &PackageUrl) -> String {
    p.to_string()
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH` (`distro=` when known, e.g. `bookworm`).
pub fn deb(name: &str, version: &str, arch: &str, distro: Option<&str>) -> Result<String> {
    let what = || format!("package URL of Debian package {name} {version} ({arch})");
    let mut p = PackageUrl::new("deb", name).with_context(what)?;
    p.with_namespace("debian")
        .and_then(|p| p.with_version(version))
        .and_then(|p| p.add_qualifier("arch", arch))
        .with_context(what)?;
    if let Some(d) = distro {
        p.add_qualifier("distro", d).with_context(what)?;
    }
    Ok(render(&p))
}

/// `pkg:cargo/NAME@VERSION` (crates.io), or with `repository_url` for
/// another registry.
pub fn cargo(name: &str, version: &str, registry: Option<&str>) -> Result<String> {
    let what = || format!("package URL of crate {name} {version}");
    let mut p = PackageUrl::new("cargo", name).with_context(what)?;
    p.with_version(version).with_context(what)?;
    if let Some(r) = registry {
        p.add_qualifier("repository_url", r).with_context(what)?;
    }
    Ok(render(&p))
}

/// `pkg:pypi/NAME@VERSION`, the name normalised as PEP 503 and the purl
/// spec say (lowercase, runs of `-_.` become `-`).
pub fn pypi(name: &str, version: &str) -> Result<String> {
    let mut norm = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !norm.ends_with('-') {
                norm.push('-');
            }
        } else {
            norm.push(c.to_ascii_lowercase());
        }
    }
    let what = || format!("package URL of Python distribution {name} {version}");
    let mut p = PackageUrl::new("pypi", norm).with_context(what)?;
    p.with_version(version).with_context(what)?;
    Ok(render(&p))
}

/// `pkg:oci/NAME@sha256:HEX?repository_url=REPOSITORY` (as the packageurl
/// crate encodes it: `:` kept in the version, `/` encoded in qualifiers): NAME is the last
/// path component of `repository` (`HOST[:PORT]/PATH/NAME`, or a bare name
/// for an image the lane built itself).
pub fn oci(repository: &str, digest: &Digest, tag: Option<&str>) -> Result<String> {
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let what = || format!("package URL of image {repository}@{digest}");
    let mut p = PackageUrl::new("oci", name.to_ascii_lowercase()).with_context(what)?;
    p.with_version(digest.as_str()).with_context(what)?;
    if repository.contains('/') {
        p.add_qualifier("repository_url", repository)
            .with_context(what)?;
    }
    if let Some(t) = tag {
        p.add_qualifier("tag", t).with_context(what)?;
    }
    Ok(render(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_are_percent_encoded() {
        assert_eq!(
            deb("base-files", "12.4+deb12u15", "amd64", None).unwrap(),
            "pkg:deb/debian/base-files@12.4%2Bdeb12u15?arch=amd64"
        );
        assert_eq!(
            deb("tzdata", "2025b-0+deb12u2", "all", Some("bookworm")).unwrap(),
            "pkg:deb/debian/tzdata@2025b-0%2Bdeb12u2?arch=all&distro=bookworm"
        );
    }

    #[test]
    fn other_ecosystems() {
        assert_eq!(
            cargo("serde", "1.0.228", None).unwrap(),
            "pkg:cargo/serde@1.0.228"
        );
        assert_eq!(
            pypi("Typing_Extensions", "4.12.2").unwrap(),
            "pkg:pypi/typing-extensions@4.12.2"
        );
        let d = Digest::of(b"x");
        assert_eq!(
            oci("127.0.0.1:5000/platform/base-cc", &d, Some("latest")).unwrap(),
            format!(
                "pkg:oci/base-cc@sha256:{}?repository_url=127.0.0.1:5000%2Fplatform%2Fbase-cc&tag=latest",
                d.hex()
            )
        );
        assert_eq!(
            oci("base-cc", &d, None).unwrap(),
            format!("pkg:oci/base-cc@sha256:{}", d.hex())
        );
    }
}
