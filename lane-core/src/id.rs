//! Typed identities: [`Digest`], [`Repository`], [`Tag`], [`Reference`].
//!
//! Parse, don't validate: `FromStr` (and serde's `Deserialize`, which calls
//! it) is the only way in, so an invalid digest, repository or tag cannot
//! exist in memory. Every file path built from a digest goes through
//! [`Digest::blob_path`], which is safe because the hex was checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Why a string is not an identity; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError(String);

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdError {}

fn err<T>(msg: String) -> Result<T, IdError> {
    Err(IdError(msg))
}

/// A sha256 content digest: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    /// The digest whose sha256 is `hash`.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in hash {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Digest(s)
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The first 12 hex digits, for names of records and logs.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }

    /// Where an OCI image layout keeps this blob: `blobs/sha256/<hex>`.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }

    /// The referrers tag fallback of the distribution spec: `sha256-<hex>`.
    pub fn fallback_tag(&self) -> Tag {
        Tag(format!("sha256-{}", self.hex()))
    }

    /// Checks `bytes` against this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::of(bytes) == *self
    }
}

impl FromStr for Digest {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Digest, IdError> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return err(format!(
                "{s:?} is not a digest: write sha256: followed by 64 lowercase hex digits"
            ));
        };
        if hex.len() != 64 {
            return err(format!(
                "{s:?} is not a digest: it has {} hex digits after sha256:, a digest has 64",
                hex.len()
            ));
        }
        if let Some(c) = hex
            .chars()
            .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
        {
            return err(format!(
                "{s:?} is not a digest: {c:?} is not a lowercase hex digit (write 0-9 and a-f only)"
            ));
        }
        Ok(Digest(s.to_string()))
    }
}

/// An OCI repository name, without registry host: lowercase components
/// joined by `/` (`platform/hello`). It never holds `..` or an absolute
/// path, so the local store can use it as a folder name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Repository(String);

impl Repository {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn component_ok(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for Repository {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Repository, IdError> {
        if s.is_empty() || s.len() > 255 || !s.split('/').all(component_ok) {
            return err(format!(
                "{s:?} is not a valid repository name: lowercase letters, digits and separators (., _, -), components joined by '/', such as \"platform/hello\""
            ));
        }
        Ok(Repository(s.to_string()))
    }
}

/// A tag a user may move: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`. Names of the
/// form `sha256-...` are the referrers fallback and are refused; the lane
/// makes those only through [`Digest::fallback_tag`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `latest`, the tag a reference without one means.
    pub fn latest() -> Tag {
        Tag("latest".into())
    }
}

impl FromStr for Tag {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Tag, IdError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || b"._-".contains(&x));
        if !ok {
            return err(format!(
                "{s:?} is not a valid tag: use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')"
            ));
        }
        if s.starts_with("sha256-") {
            return err(format!(
                "{s:?} is a referrers fallback tag (sha256-<hex>); pick another tag name"
            ));
        }
        Ok(Tag(s.to_string()))
    }
}

/// Where a reference points: a registry host, the embedded local store
/// (`local/`), or not said (the command's `--registry` decides).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Unspecified,
    Local,
    Registry(String),
}

/// What a reference names in its repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Digest(Digest),
    Tag(Tag),
}

/// An image reference as users and the lane print it:
/// `HOST[:PORT]/REPO@sha256:...`, `local/REPO@sha256:...`,
/// `REPO@sha256:...` or `REPO[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub location: Location,
    pub repository: Repository,
    pub target: Target,
}

impl Reference {
    /// The digest, or the refusal a command that needs one gives.
    pub fn digest(&self) -> Option<&Digest> {
        match &self.target {
            Target::Digest(d) => Some(d),
            Target::Tag(_) => None,
        }
    }
}

fn host_ok(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    let name_ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

impl FromStr for Reference {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Reference, IdError> {
        let text = text.trim();
        // The first component is a host when it looks like one (a dot, a
        // port, or localhost), as Docker and the distribution spec read it.
        let (location, rest) = match text.split_once('/') {
            Some(("local", rest)) => (Location::Local, rest),
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !host_ok(first) {
                    return err(format!(
                        "{first:?} is not a registry host: write HOST or HOST:PORT, as in 127.0.0.1:5000/platform/hello@sha256:..."
                    ));
                }
                (Location::Registry(first.to_string()), rest)
            }
            _ => (Location::Unspecified, text),
        };
        if let Some((repository, digest)) = rest.split_once('@') {
            return Ok(Reference {
                location,
                repository: repository.parse()?,
                target: Target::Digest(digest.parse()?),
            });
        }
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], rest[slash + i + 1..].parse()?),
            None => (rest, Tag::latest()),
        };
        Ok(Reference {
            location,
            repository: repository.parse()?,
            target: Target::Tag(tag),
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Unspecified => {}
            Location::Local => f.write_str("local/")?,
            Location::Registry(h) => write!(f, "{h}/")?,
        }
        match &self.target {
            Target::Digest(d) => write!(f, "{}@{d}", self.repository),
            Target::Tag(t) => write!(f, "{}:{t}", self.repository),
        }
    }
}

macro_rules! string_identity {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_identity!(Digest, Repository, Tag);

impl PartialEq<Digest> for String {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl PartialEq<Digest> for str {
    fn eq(&self, other: &Digest) -> bool {
        self == other.0
    }
}

impl PartialEq<Digest> for &str {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_are_lowercase_sha256_of_64_hex_digits() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.blob_path(), format!("blobs/sha256/{HEX}"));
        assert_eq!(d.fallback_tag().as_str(), format!("sha256-{HEX}"));
        for bad in [
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            "sha256:../../x".to_string(),
            format!("sha512:{HEX}"),
            HEX.to_string(),
            String::new(),
        ] {
            let e = bad.parse::<Digest>().unwrap_err().to_string();
            assert!(e.contains("is not a digest"), "{bad}: {e}");
        }
        assert!(
            "sha256:../../x"
                .parse::<Digest>()
                .unwrap_err()
                .to_string()
                .contains("hex digits")
        );
    }

    #[test]
    fn digest_of_bytes_is_the_sha256_and_deserialising_validates() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::of(b"x").matches(b"x"));
        let e = serde_json::from_str::<Digest>("\"sha256:../../x\"").unwrap_err();
        assert!(e.to_string().contains("is not a digest"), "{e}");
        let d: Digest = serde_json::from_str(&format!("\"sha256:{HEX}\"")).unwrap();
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            format!("\"sha256:{HEX}\"")
        );
    }

    #[test]
    fn repositories_follow_the_distribution_grammar() {
        for ok in ["a", "platform/hello", "a.b/c_d/e__f/g--h", "x0/1y"] {
            assert!(ok.parse::<Repository>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a._b", "-a", "a-", "a b",
        ] {
            assert!(bad.parse::<Repository>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_tag_grammar_and_fallback_tags_are_reserved() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129), "sha256-abc"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_as_the_lane_prints_them() {
        let d = format!("sha256:{HEX}");
        let r: Reference = format!("127.0.0.1:5000/platform/hello@{d}")
            .parse()
            .unwrap();
        assert_eq!(r.location, Location::Registry("127.0.0.1:5000".into()));
        assert_eq!(r.repository.as_str(), "platform/hello");
        assert_eq!(r.digest().unwrap().as_str(), d);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/platform/hello@{d}"));

        let r: Reference = format!("local/platform/hello@{d}").parse().unwrap();
        assert_eq!(r.location, Location::Local);
        assert_eq!(r.to_string(), format!("local/platform/hello@{d}"));

        let r: Reference = format!("platform/hello@{d}").parse().unwrap();
        assert_eq!(r.location, Location::Unspecified);

        let r: Reference = "localhost:5000/a/b:v1".parse().unwrap();
        assert_eq!(r.location, Location::Registry("localhost:5000".into()));
        assert_eq!(r.target, Target::Tag("v1".parse().unwrap()));

        let r: Reference = "platform/hello".parse().unwrap();
        assert_eq!(r.target, Target::Tag(Tag::latest()));

        assert!(
            "platform/hello@sha256:../../x"
                .parse::<Reference>()
                .is_err()
        );
        assert!("Platform/hello@sha256:x".parse::<Reference>().is_err());
        assert!("bad host!.x/a@sha256:x".parse::<Reference>().is_err());
    }
}

/// Hostile identities (docs/fault-matrix-parsers.md): digests from registries' documents
/// and headers, references and tags from the command line.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(hostile::config(512))]
        #[test]
        fn identities_arbitrary(s in any::<String>(), shaped in "(sha256:)?[0-9a-f./]{0,70}|[a-z0-9.:/@_-]{0,40}") {
            for t in [&s, &shaped] {
                if let Ok(d) = t.parse::<Digest>() {
                    prop_assert!(!d.blob_path().contains(".."));
                }
                let _ = t.parse::<Reference>();
                let _ = t.parse::<Tag>();
                let _ = t.parse::<Repository>();
            }
        }
    }
}
