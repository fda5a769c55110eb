//! The `no-secrets` gate's scanner (issue 27): high-confidence secret
//! formats in file contents. Pure: bytes in, the kinds found out; never
//! the secret itself. Streams: a file is fed in chunks, a match may span
//! two of them.
//!
//! Formats: a PEM private key (`-----BEGIN ... PRIVATE KEY-----`), an HTTP
//! `Authorization: Basic|Bearer <credential>` header value (as a CI
//! checkout keeps one in `.git/config`), GitHub tokens (`ghp_`, `gho_`,
//! `ghu_`, `ghs_`, `ghr_` and `github_pat_`), AWS access key ids
//! (`AKIA`/`ASIA` and 16 capitals or digits), and the secrets this run
//! knows (its signing key, its registry password) wherever they appear.

use std::collections::BTreeSet;

/// What was found (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    PrivateKey,
    AuthorizationHeader,
    GithubToken,
    AwsAccessKey,
    /// The release's own signing key.
    SigningKey,
    /// The release's own registry password.
    RegistryPassword,
}

impl SecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::PrivateKey => "private-key",
            SecretKind::AuthorizationHeader => "authorization-header",
            SecretKind::GithubToken => "github-token",
            SecretKind::AwsAccessKey => "aws-access-key",
            SecretKind::SigningKey => "signing-key",
            SecretKind::RegistryPassword => "registry-password",
        }
    }
}

/// The bytes a match may span across two chunks.
const OVERLAP: usize = 256;

/// Scans one file's content, fed in chunks.
pub struct FileScan<'a> {
    known: &'a [(SecretKind, Vec<u8>)],
    tail: Vec<u8>,
    found: BTreeSet<SecretKind>,
}

/// The secrets this run knows, to find verbatim (values shorter than 8
/// bytes are left out: they would match by chance).
pub fn known(values: Vec<(SecretKind, String)>) -> Vec<(SecretKind, Vec<u8>)> {
    values
        .into_iter()
        .filter(|(_, v)| v.len() >= 8)
        .map(|(k, v)| (k, v.into_bytes()))
        .collect()
}

impl<'a> FileScan<'a> {
    pub fn new(known: &'a [(SecretKind, Vec<u8>)]) -> FileScan<'a> {
        FileScan {
            known,
            tail: Vec::new(),
            found: BTreeSet::new(),
        }
    }

    /// Feeds the next chunk of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        // The previous chunk's tail is scanned again with this chunk, so a
        // match across the border is seen; the set drops repeats.
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        scan_into(&buf, self.known, &mut self.found);
        let keep = buf.len().min(OVERLAP);
        self.tail = buf[buf.len() - keep..].to_vec();
    }

    /// The kinds found in the whole file.
    pub fn finish(self) -> BTreeSet<SecretKind> {
        self.found
    }
}

/// The kinds found in `bytes` (one whole file).
pub fn scan(bytes: &[u8], known: &[(SecretKind, Vec<u8>)]) -> BTreeSet<SecretKind> {
    let mut s = FileScan::new(known);
    s.feed(bytes);
    s.finish()
}

fn scan_into(b: &[u8], known: &[(SecretKind, Vec<u8>)], found: &mut BTreeSet<SecretKind>) {
    use memchr::memmem;
    for (kind, value) in known {
        if !found.contains(kind) && memmem::find(b, value).is_some() {
            found.insert(*kind);
        }
    }
    // Each format by its fixed prefix (SIMD search), then the bytes after.
    for i in memmem::find_iter(b, b"-----BEGIN ") {
        let head = &b[i + 11..b.len().min(i + 11 + 48)];
        if let Some(end) = memmem::find(head, b"-----")
            && head[..end].ends_with(b"PRIVATE KEY")
        {
            found.insert(SecretKind::PrivateKey);
            break;
        }
    }
    // `authorization:` in any case: each colon, the 13 bytes before it.
    for i in memchr::memchr_iter(b':', b) {
        if i >= 13 && b[i - 13..i].eq_ignore_ascii_case(b"authorization") {
            let v = skip_spaces(&b[i + 1..]);
            let cred = if starts_with_ignore_case(v, b"basic ") {
                Some(&v[6..])
            } else if starts_with_ignore_case(v, b"bearer ") {
                Some(&v[7..])
            } else {
                None
            };
            if let Some(c) = cred
                && run(skip_spaces(c), |x| {
                    x.is_ascii_alphanumeric() || b"+/=._-~".contains(&x)
                }) >= 8
            {
                found.insert(SecretKind::AuthorizationHeader);
                break;
            }
        }
    }
    for prefix in [b"AKIA", b"ASIA"] {
        for i in memmem::find_iter(b, prefix) {
            if boundary_before(b, i)
                && run(&b[i + 4..], |x| {
                    x.is_ascii_uppercase() || x.is_ascii_digit()
                }) == 16
            {
                found.insert(SecretKind::AwsAccessKey);
                break;
            }
        }
    }
    for i in memmem::find_iter(b, b"gh") {
        let rest = &b[i..];
        let short = rest.len() > 3 && b"pousr".contains(&rest[2]) && rest[3] == b'_';
        if short && boundary_before(b, i) && run(&rest[4..], |x| x.is_ascii_alphanumeric()) >= 36 {
            found.insert(SecretKind::GithubToken);
            break;
        }
    }
    for i in memmem::find_iter(b, b"github_pat_") {
        if run(&b[i + 11..], |x| x.is_ascii_alphanumeric() || x == b'_') >= 22 {
            found.insert(SecretKind::GithubToken);
            break;
        }
    }
}

fn boundary_before(b: &[u8], i: usize) -> bool {
    i == 0 || !b[i - 1].is_ascii_alphanumeric()
}

fn run(b: &[u8], ok: impl Fn(u8) -> bool) -> usize {
    b.iter().take_while(|x| ok(**x)).count()
}

fn skip_spaces(b: &[u8]) -> &[u8] {
    let n = run(b, |x| x == b' ' || x == b'\t');
    &b[n..]
}

fn starts_with_ignore_case(b: &[u8], p: &[u8]) -> bool {
    b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        scan(text.as_bytes(), &[])
            .into_iter()
            .map(SecretKind::as_str)
            .collect()
    }

    #[test]
    fn each_format_is_found_and_near_misses_are_not() {
        assert_eq!(
            kinds("x\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"),
            ["private-key"]
        );
        assert_eq!(
            kinds("-----BEGIN OPENSSH PRIVATE KEY-----"),
            ["private-key"]
        );
        assert!(kinds("-----BEGIN CERTIFICATE-----\nMIIB").is_empty());
        assert!(kinds("-----BEGIN PUBLIC KEY-----").is_empty());
        assert_eq!(
            kinds(
                "[http]\n\textraheader = AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hzXzEyMw==\n"
            ),
            ["authorization-header"]
        );
        assert_eq!(
            kinds("Authorization: Bearer abcdefgh.ijk"),
            ["authorization-header"]
        );
        assert!(kinds("the Authorization: header carries a token").is_empty());
        assert!(kinds("authorization: basic $TOKEN").is_empty());
        assert_eq!(
            kinds(&format!("token=ghp_{}", "a1".repeat(18))),
            ["github-token"]
        );
        assert_eq!(
            kinds(&format!("github_pat_{}", "A_".repeat(11))),
            ["github-token"]
        );
        assert!(kinds("ghp_short").is_empty());
        assert_eq!(kinds("key AKIAIOSFODNN7EXAMPLE\n"), ["aws-access-key"]);
        assert!(kinds("XAKIAIOSFODNN7EXAMPLE").is_empty());
        assert!(kinds("AKIAIOSFODNN7EXAMPLEX").is_empty());
    }

    #[test]
    fn known_secrets_are_found_and_chunk_borders_do_not_hide_a_match() {
        let k = known(vec![
            (SecretKind::RegistryPassword, "s3cret-pass-42".into()),
            (SecretKind::SigningKey, "short".into()),
        ]);
        assert_eq!(k.len(), 1, "values under 8 bytes are not looked for");
        let text = format!("{}s3cret-pass-42{}", "x".repeat(1000), "y".repeat(10));
        for split in [1000, 1005, 1013, 1014] {
            let mut s = FileScan::new(&k);
            s.feed(&text.as_bytes()[..split]);
            s.feed(&text.as_bytes()[split..]);
            assert_eq!(
                s.finish().into_iter().collect::<Vec<_>>(),
                [SecretKind::RegistryPassword],
                "split at {split}"
            );
        }
        let pem = "-----BEGIN EC PRIVATE KEY-----";
        let mut s = FileScan::new(&[]);
        s.feed(&pem.as_bytes()[..9]);
        s.feed(&pem.as_bytes()[9..]);
        assert_eq!(s.finish().len(), 1);
    }
}
