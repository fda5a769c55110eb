//! `promote --to` another repository of the same registry mounts blobs
//! (issue 15): the OCI distribution spec's cross-repository mount,
//! `POST /v2/<to>/blobs/uploads/?mount=<digest>&from=<from>`, answered 201 by
//! the real Distribution registry, instead of reading each blob and
//! uploading it again; a registry that answers 202 (it will not mount) gets
//! the blobs uploaded. With and without htpasswd auth.
//!
//! A recording proxy sits between the lane and the registry: it forwards
//! every request unchanged and notes the method, the path and the
//! registry's status, so the test sees what the registry answered. Asked
//! to, it forwards a mount request as a plain upload start, which is how a
//! registry that does not mount answers (202 and an upload session).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::registry::{
    BEARER_PASSWORD, BEARER_USER, Creds, Fault, FaultProxy, Registry, http, sha256_of,
};
use crate::support::{Fixture, TempDir, show};
use serde_json::Value;

// The files-only image and repository of the verify tests.
use crate::verify::{IMAGE, REPO};

/// One request as the proxy saw it and the registry answered it.
#[derive(Debug, Clone)]
struct Exchange {
    method: String,
    /// The path as the lane sent it (query included).
    path: String,
    status: u16,
}

/// The recording proxy (see the module comment).
struct Recorder {
    port: u16,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl Recorder {
    fn start(upstream: u16, strip_mount: bool) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let shared = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = shared.clone();
                std::thread::spawn(move || {
                    let _ = relay(conn, upstream, strip_mount, &log);
                });
            }
        });
        Recorder { port, log }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn take(&self) -> Vec<Exchange> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// Forwards one request (`Connection: close` both ways) and records it.
fn relay(
    client: TcpStream,
    upstream: u16,
    strip_mount: bool,
    log: &Mutex<Vec<Exchange>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let mut parts = head[0].split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let header = |name: &str| {
        head[1..].iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut client = client;
    if header("transfer-encoding").is_some() {
        // Not needed by promote; say so rather than relay it wrong.
        log.lock().unwrap().push(Exchange {
            method,
            path,
            status: 501,
        });
        return client.write_all(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let length: u64 = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let forwarded = if strip_mount && method == "POST" && path.contains("mount=") {
        path.split('?').next().unwrap_or_default().to_string()
    } else {
        path.clone()
    };
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut out = format!("{method} {forwarded} HTTP/1.1\r\n");
    for h in &head[1..] {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(&format!("{h}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    std::io::copy(&mut (&mut reader).take(length), &mut up)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let status = String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    log.lock().unwrap().push(Exchange {
        method,
        path,
        status,
    });
    client.write_all(&response)
}

/// A workspace with one files-only image and a policy that trusts a fresh
/// signing key.
fn workspace() -> (Fixture, TempDir, String) {
    crate::support::signed_files_workspace("promote-mount", IMAGE)
}

/// Every blob the manifests of `repo@digest` and of its attached artifacts
/// name, read from the registry with skopeo (not the lane).
fn blobs_of(reg: &Registry, repo: &str, digest: &str) -> BTreeSet<String> {
    let manifest = |reference: &str| -> Value {
        let raw = reg
            .skopeo_raw(reference)
            .unwrap_or_else(|| panic!("{reference} is not in the registry"));
        serde_json::from_slice(&raw).unwrap()
    };
    let names = |m: &Value| -> Vec<String> {
        std::iter::once(&m["config"])
            .chain(m["layers"].as_array().into_iter().flatten())
            .filter_map(|d| d["digest"].as_str().map(str::to_string))
            .collect()
    };
    let mut out: BTreeSet<String> = names(&manifest(&format!("{repo}@{digest}")))
        .into_iter()
        .collect();
    let referrers = manifest(&format!("{repo}:sha256-{}", &digest["sha256:".len()..]));
    for r in referrers["manifests"].as_array().unwrap() {
        let d = r["digest"].as_str().unwrap();
        out.extend(names(&manifest(&format!("{repo}@{d}"))));
    }
    out
}

fn basic_auth(reg: &Registry) -> Option<String> {
    use base64::Engine as _;
    reg.auth.as_ref().map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    })
}

/// Releases the image to `reg`, promotes it into `prod/files` through a
/// recording proxy in front of port `front` (the registry, or a proxy in
/// front of it) and checks that every blob was mounted (201), none read or
/// uploaded; then, through a proxy that makes mounts plain upload starts
/// (202), into `prod/other`, and checks the blobs were uploaded.
fn promote_mounts(reg: &Registry, front: u16, creds: impl Fn() -> Creds) {
    let (f, _keys, key) = workspace();
    let ci = match &reg.auth {
        Some((u, p)) => Creds::env(u, p),
        None => Creds::none(),
    }
    .ci(&f);
    let out = ci.xtask(
        &f,
        &[
            "release",
            "--json",
            "--signing-key",
            &key,
            "--registry",
            &reg.host(),
        ],
    );
    assert!(out.status.success(), "release: {}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = r["images"][0]["digest"].as_str().unwrap().to_string();
    let source_blobs = blobs_of(reg, REPO, &d);
    let layer = reg
        .skopeo_raw(&format!("{REPO}@{d}"))
        .map(|m| serde_json::from_slice::<Value>(&m).unwrap())
        .unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let proxy = Recorder::start(front, false);
    let promote = |to: &str, proxy: &Recorder| {
        let out = creds().xtask(
            &f,
            &[
                "promote",
                &format!("{REPO}@{d}"),
                "--tag",
                "prod",
                "--to",
                to,
                "--registry",
                &proxy.host(),
                "--json",
            ],
        );
        assert!(out.status.success(), "promote --to {to}: {}", show(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let report = promote("prod/files", &proxy);
    let log = proxy.take();
    assert_eq!(report["copied"], true, "{report}");
    assert_eq!(reg.tag_digest("prod/files", "prod").as_deref(), Some(&*d));

    // Every blob of the image and its evidence is in the target now, and
    // each one the registry was asked to mount it answered 201.
    let target_blobs = blobs_of(reg, "prod/files", &d);
    assert_eq!(target_blobs, source_blobs);
    let mounts: Vec<&Exchange> = log
        .iter()
        .filter(|e| e.method == "POST" && e.path.starts_with("/v2/prod/files/blobs/uploads/"))
        .collect();
    assert!(!mounts.is_empty(), "no upload or mount request: {log:#?}");
    for m in &mounts {
        assert!(
            m.path.contains("mount=sha256%3A") && m.path.contains("from=test%2Ffiles"),
            "a blob upload instead of a mount: {m:?}"
        );
        assert_eq!(m.status, 201, "the registry did not mount: {m:?}");
    }
    let mounted: BTreeSet<&str> = mounts
        .iter()
        .filter_map(|m| m.path.split("mount=sha256%3A").nth(1))
        .map(|rest| rest.split('&').next().unwrap())
        .collect();
    let expected: BTreeSet<&str> = source_blobs.iter().map(|b| &b["sha256:".len()..]).collect();
    assert_eq!(mounted, expected, "each blob mounted once");
    assert_eq!(report["blobs"]["mounted"], expected.len(), "{report}");
    assert_eq!(report["blobs"]["uploaded"], 0, "{report}");
    assert_eq!(report["blobs"]["bytes_uploaded"], 0, "{report}");
    // No byte went through the lane: no blob upload, and the image's layer
    // was never read from the source repository.
    assert!(
        !log.iter()
            .any(|e| (e.method == "PUT" || e.method == "PATCH")
                && e.path.contains("/blobs/uploads/")),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|e| e.method == "GET" && e.path == format!("/v2/{REPO}/blobs/{layer}")),
        "the layer was read from the source: {log:#?}"
    );
    // The mounted layer is served from the target, byte for byte.
    let auth = basic_auth(reg);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, _, body) = http(
        reg.port,
        "GET",
        &format!("/v2/prod/files/blobs/{layer}"),
        &headers,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256_of(&body), layer);

    // A registry that does not mount (202: an upload session): the lane
    // cancels the session and uploads each blob; the copy is complete.
    let no_mount = Recorder::start(front, true);
    let report = promote("prod/other", &no_mount);
    let log = no_mount.take();
    let refused: Vec<&Exchange> = log
        .iter()
        .filter(|e| e.method == "POST" && e.path.contains("mount="))
        .collect();
    assert_eq!(refused.len(), expected.len(), "{log:#?}");
    assert!(refused.iter().all(|e| e.status == 202), "{refused:#?}");
    assert_eq!(report["blobs"]["mounted"], 0, "{report}");
    assert_eq!(report["blobs"]["uploaded"], expected.len(), "{report}");
    assert!(report["blobs"]["bytes_uploaded"].as_u64().unwrap() > 0);
    assert_eq!(blobs_of(reg, "prod/other", &d), source_blobs);
    assert_eq!(reg.tag_digest("prod/other", "prod").as_deref(), Some(&*d));
}

#[test]
fn promote_to_another_repository_mounts_its_blobs() {
    let reg = Registry::start();
    promote_mounts(&reg, reg.port, Creds::none);
}

#[test]
fn promote_to_another_repository_mounts_its_blobs_with_htpasswd_auth() {
    let reg = Registry::start_with_auth("lane", "s3cret-pass");
    promote_mounts(&reg, reg.port, || Creds::env("lane", "s3cret-pass"));
}

/// Token auth (as Docker Hub, GHCR, Harbor do), from the harness's proxy in
/// front of the registry: the lane asks the token service for pull on the
/// source as well as push on the target, and the mount goes through.
#[test]
fn promote_to_another_repository_mounts_its_blobs_with_token_auth() {
    let reg = Registry::start();
    let bearer = FaultProxy::start(reg.port, Fault::BearerAuth);
    promote_mounts(&reg, bearer.port, || {
        Creds::env(BEARER_USER, BEARER_PASSWORD)
    });
    assert!(bearer.hits() > 0, "no token was asked for");
}
