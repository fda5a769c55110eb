//! PEP 440 versions and version specifiers, as far as the lane needs them:
//! checking that an installed version satisfies a `Requires-Dist`
//! specifier and that a transitive pin meets every constraint. Choosing the
//! best version is pip's job (`pip download`), not ours.

use std::cmp::Ordering;
use std::fmt;

use anyhow::{Result, bail};

/// A parsed PEP 440 version (`1!2.0.3rc1.post2.dev3+local`).
#[derive(Debug, Clone)]
pub struct Version {
    pub text: String,
    epoch: u64,
    release: Vec<u64>,
    /// (0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Option<String>,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version> {
        let orig = text;
        let s = text.trim().to_ascii_lowercase();
        let s = s.strip_prefix('v').unwrap_or(&s);
        let (s, local) = match s.split_once('+') {
            Some((a, l)) => (a, Some(l.to_string())),
            None => (s, None),
        };
        let (epoch, s) = match s.split_once('!') {
            Some((e, rest)) => (num(e, orig)?, rest),
            None => (0, s),
        };
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut release = Vec::new();
        loop {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                bail!("version {orig:?} is not a PEP 440 version");
            }
            release.push(num(&s[start..i], orig)?);
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                continue;
            }
            break;
        }
        let mut rest = &s[i..];
        let mut pre = None;
        let mut post = None;
        let mut dev = None;
        let take_num = |r: &str| -> (u64, usize) {
            let r2 = r.trim_start_matches(['.', '-', '_']);
            let skipped = r.len() - r2.len();
            let n = r2.bytes().take_while(u8::is_ascii_digit).count();
            (r2[..n].parse().unwrap_or(0), skipped + n)
        };
        for (names, kind) in [
            (&["alpha", "a"][..], 0u8),
            (&["beta", "b"][..], 1),
            (&["preview", "pre", "rc", "c"][..], 2),
        ] {
            let r = rest.trim_start_matches(['.', '-', '_']);
            if let Some(n) = names.iter().find(|n| r.starts_with(**n)) {
                let after = &r[n.len()..];
                let (v, used) = take_num(after);
                pre = Some((kind, v));
                rest = &after[used..];
                break;
            }
        }
        {
            let r = rest.trim_start_matches(['.', '-', '_']);
            if let Some(n) = ["post", "rev", "r"].iter().find(|n| r.starts_with(**n)) {
                let after = &r[n.len()..];
                let (v, used) = take_num(after);
                post = Some(v);
                rest = &after[used..];
            } else if let Some(after) = rest.strip_prefix('-')
                && after.bytes().next().is_some_and(|b| b.is_ascii_digit())
            {
                let (v, used) = take_num(after);
                post = Some(v);
                rest = &after[used..];
            }
        }
        {
            let r = rest.trim_start_matches(['.', '-', '_']);
            if let Some(after) = r.strip_prefix("dev") {
                let (v, used) = take_num(after);
                dev = Some(v);
                rest = &after[used..];
            }
        }
        if !rest.is_empty() {
            bail!("version {orig:?} is not a PEP 440 version (unexpected {rest:?})");
        }
        Ok(Version {
            text: orig.trim().to_string(),
            epoch,
            release,
            pre,
            post,
            dev,
            local,
        })
    }

    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    fn release_at(&self, i: usize) -> u64 {
        self.release.get(i).copied().unwrap_or(0)
    }

    fn key(&self) -> (i128, i128, i128, i128) {
        // PEP 440 ordering of the suffixes, as in packaging's _cmpkey.
        let pre = match (self.pre, self.post, self.dev) {
            (None, None, Some(_)) => i128::MIN,
            (Some((k, n)), _, _) => (k as i128) << 64 | n as i128,
            (None, _, _) => i128::MAX,
        };
        let post = self.post.map_or(i128::MIN, |p| p as i128);
        let dev = self.dev.map_or(i128::MAX, |d| d as i128);
        (pre, post, dev, 0)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| {
                let n = self.release.len().max(other.release.len());
                (0..n)
                    .map(|i| self.release_at(i).cmp(&other.release_at(i)))
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            })
            .then_with(|| self.key().cmp(&other.key()))
            .then_with(|| self.local.cmp(&other.local))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn num(s: &str, orig: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("version {orig:?} is not a PEP 440 version"))
}

/// One clause of a specifier set (`>=1.5`, `==2.*`, `~=1.4.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specifier {
    pub op: String,
    pub version: String,
}

impl fmt::Display for Specifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op, self.version)
    }
}

impl Specifier {
    pub fn parse(text: &str) -> Result<Specifier> {
        let t = text.trim();
        for op in ["===", "~=", "==", "!=", "<=", ">=", "<", ">"] {
            if let Some(v) = t.strip_prefix(op) {
                let v = v.trim();
                if v.is_empty() {
                    bail!("version specifier {text:?} has no version");
                }
                if op != "===" {
                    Version::parse(v.trim_end_matches(".*"))?;
                }
                return Ok(Specifier {
                    op: op.to_string(),
                    version: v.to_string(),
                });
            }
        }
        bail!("version specifier {text:?} has no operator (==, >=, <=, !=, ~=, <, >, ===)")
    }

    /// Whether `v` satisfies this clause (pre-releases are not excluded:
    /// the lane checks pins, it does not choose them).
    pub fn contains(&self, v: &Version) -> bool {
        if self.op == "===" {
            return v.text == self.version;
        }
        if let Some(prefix) = self.version.strip_suffix(".*") {
            let Ok(p) = Version::parse(prefix) else {
                return false;
            };
            let matches = p.epoch == v.epoch
                && (0..p.release.len()).all(|i| p.release_at(i) == v.release_at(i));
            return match self.op.as_str() {
                "==" => matches,
                "!=" => !matches,
                _ => false,
            };
        }
        let Ok(s) = Version::parse(&self.version) else {
            return false;
        };
        // A specifier without a local label ignores the candidate's.
        let mut v = v.clone();
        if s.local.is_none() {
            v.local = None;
        }
        match self.op.as_str() {
            "==" => v == s,
            "!=" => v != s,
            ">=" => v >= s,
            "<=" => v <= s,
            ">" => v > s && !(v.post.is_some() && s.post.is_none() && same_base(&v, &s)),
            "<" => v < s && !(v.is_prerelease() && !s.is_prerelease() && same_base(&v, &s)),
            "~=" => {
                let n = s.release.len().saturating_sub(1).max(1);
                v >= s && v.epoch == s.epoch && (0..n).all(|i| v.release_at(i) == s.release_at(i))
            }
            _ => false,
        }
    }
}

fn same_base(a: &Version, b: &Version) -> bool {
    let n = a.release.len().max(b.release.len());
    a.epoch == b.epoch && (0..n).all(|i| a.release_at(i) == b.release_at(i))
}

/// A comma-separated specifier set; empty means any version.
pub fn parse_specifiers(text: &str) -> Result<Vec<Specifier>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Specifier::parse)
        .collect()
}

pub fn satisfies(version: &Version, specs: &[Specifier]) -> bool {
    specs.iter().all(|s| s.contains(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_order_like_pep_440() {
        let ordered = [
            "1.0.dev1",
            "1.0a1",
            "1.0a2.dev1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.1",
            "2.9.0",
            "2.9.0.post0",
            "10.0",
            "1!0.1",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.0"), v("1.0.0"));
        assert!(Version::parse("1.0-foo").is_err());
        assert!(Version::parse("abc").is_err());
    }

    #[test]
    fn specifiers_match() {
        let yes = [
            ("six", ">=1.5", "1.17.0"),
            ("x", "==2.*", "2.9.0.post0"),
            ("x", "~=1.4.2", "1.4.9"),
            ("x", "!=1.0", "1.1"),
            ("x", "<2", "1.9"),
            ("x", "==1.0", "1.0+local"),
        ];
        for (_, s, ver) in yes {
            assert!(Specifier::parse(s).unwrap().contains(&v(ver)), "{ver} {s}");
        }
        let no = [
            (">=1.5", "1.4"),
            ("~=1.4.2", "1.5.0"),
            ("<2", "2.0rc1"),
            (">1.0", "1.0.post1"),
            ("==2.*", "3.0"),
        ];
        for (s, ver) in no {
            assert!(
                !Specifier::parse(s).unwrap().contains(&v(ver)),
                "{ver} !{s}"
            );
        }
        assert!(Specifier::parse("1.0").is_err());
        assert_eq!(parse_specifiers(">=1, <2").unwrap().len(), 2);
    }
}

/// Hostile versions and specifiers (docs/fault-matrix-parsers.md): from wheels' METADATA
/// and file names, and from `image.toml`.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile;
    use proptest::prelude::*;

    fn check(text: &str) {
        if let Ok(v) = Version::parse(text) {
            assert_eq!(v.cmp(&v), std::cmp::Ordering::Equal);
            let _ = v.is_prerelease();
        }
        if let Ok(specs) = parse_specifiers(text)
            && let Ok(v) = Version::parse("1.0.post1")
        {
            let _ = satisfies(&v, &specs);
        }
    }

    proptest! {
        #![proptest_config(hostile::config(512))]
        #[test]
        fn versions_arbitrary(text in any::<String>()) {
            check(&text);
        }

        #[test]
        fn versions_from_the_grammar(
            text in "[v0-9!.+a-z_*=<>~,-]{0,30}",
            other in "[0-9]{1,30}(\\.[0-9]{1,25}){0,3}(a|b|rc|post|dev)?[0-9]{0,25}",
        ) {
            check(&text);
            check(&other);
            if let (Ok(a), Ok(s)) = (Version::parse(&other), Specifier::parse(&format!("~={other}"))) {
                let _ = s.contains(&a);
            }
        }
    }
}
