//! The real Distribution registry (the product's launcher,
//! `xtask::adapters::registry_server`) in a temporary directory, with what
//! the tests read back from it (skopeo, blob counts); a fault-injecting HTTP
//! proxy to put in front of it; and helpers to run the lane against them
//! with an isolated credential setup.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use xtask::adapters::registry_server::RegistryServer;

use super::{Fixture, TempDir, run};

/// The product's registry launcher in a temporary directory, with what the
/// tests read back from it; killed on drop.
pub struct Registry {
    server: RegistryServer,
    pub port: u16,
    /// `(user, password)` when started with htpasswd auth.
    pub auth: Option<(String, String)>,
    _dir: TempDir,
}

impl Registry {
    /// A registry without auth.
    pub fn start() -> Registry {
        Registry::spawn(None)
    }

    /// A registry with htpasswd auth for one user.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::spawn(Some((user, password)))
    }

    fn spawn(auth: Option<(&str, &str)>) -> Registry {
        let dir = TempDir::new("registry");
        let server = RegistryServer::start(dir.path(), auth).unwrap_or_else(|e| panic!("{e:#}"));
        Registry {
            port: server.port(),
            auth: server.auth().map(|(u, p)| (u.to_string(), p.to_string())),
            server,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.host()
    }

    /// The registry's storage folder.
    pub fn storage(&self) -> std::path::PathBuf {
        self.server.storage()
    }

    /// Every blob the registry stores (files named `data` under blobs/).
    pub fn blob_count(&self) -> usize {
        let blobs = self.server.storage().join("docker/registry/v2/blobs");
        if !blobs.exists() {
            return 0;
        }
        walk(&blobs)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "data"))
            .count()
    }

    fn creds_args(&self) -> Vec<String> {
        match &self.auth {
            Some((u, p)) => vec!["--creds".into(), format!("{u}:{p}")],
            None => vec![],
        }
    }

    /// `skopeo inspect --raw` of `repo:tag` or `repo@digest`, read straight
    /// from this registry: the manifest bytes, or None if it has none.
    pub fn skopeo_raw(&self, reference: &str) -> Option<Vec<u8>> {
        let out = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(self.creds_args())
            .arg(format!("docker://{}/{reference}", self.host())));
        if out.status.success() {
            Some(out.stdout)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("manifest unknown") || err.contains("not found"),
                "skopeo inspect --raw {reference} failed unexpectedly: {err}"
            );
            None
        }
    }

    /// `skopeo inspect` (config too) of a reference; its stdout.
    pub fn skopeo_inspect(&self, reference: &str) -> Output {
        run(Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .args(self.creds_args())
            .arg(format!("docker://{}/{reference}", self.host())))
    }

    /// The tags of `repo`, sorted, read from the registry's storage.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let dir = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags");
        let mut tags: Vec<String> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        tags.sort();
        tags
    }

    /// The file the registry keeps blob `digest` in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The digest `repo:tag` resolves to now (sha256 of the bytes skopeo reads).
    pub fn tag_digest(&self, repo: &str, tag: &str) -> Option<String> {
        self.skopeo_raw(&format!("{repo}:{tag}"))
            .map(|b| sha256_of(&b))
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
}

/// sha256 of bytes through sha256sum, independent of the lane's code.
pub fn sha256_of(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

/// Status, headers and body of an HTTP response.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// A minimal HTTP/1.1 request; None when the connection fails.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let (head, body) = split_head(&raw)?;
    let (status_line, hdrs) = parse_head(head);
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, hdrs, body.to_vec()))
}

fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&raw[..i], &raw[i + 4..]))
}

fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (first, headers)
}

/// What the proxy does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Replace `Docker-Content-Digest` on manifest responses with another digest.
    LieDigestHeader,
    /// Remove `Docker-Content-Digest` from manifest responses (allowed, but
    /// then the client must hash the bytes itself).
    StripDigestHeader,
    /// Serve manifest GET bodies with one byte appended (headers unchanged).
    AlterManifestBytes,
    /// Like AlterManifestBytes, but only for reads by tag (not by digest).
    AlterTagBytes,
    /// Read part of a blob upload's body, then drop the connection.
    DropBlobUpload,
    /// Act as a registry with token auth (as Docker Hub, GHCR, Harbor do):
    /// 401 with a Bearer challenge unless the request carries the token
    /// that `/token` hands out for Basic `BEARER_USER:BEARER_PASSWORD`.
    BearerAuth,
    /// Answer 403 to every request that starts a blob upload (a user with
    /// pull but no push permission).
    DenyPush,
    /// Send manifest GET bodies one byte every 200 ms.
    TrickleManifest,
    /// Answer manifest GETs with 5 MiB, no Content-Length (read to close).
    HugeManifest,
    /// Answer manifest GETs with a redirect to the same path, forever.
    RedirectLoop,
    /// Redirect manifest GETs to this port of 127.0.0.1 (another host).
    RedirectTo(u16),
    /// Ask for a Bearer token from a realm on this port of 127.0.0.2 (a
    /// token service on another host, over plain http).
    BearerRealmOn2(u16),
    /// Point the `Location` of every started upload at this port of
    /// 127.0.0.2 (another host).
    LocationOn2(u16),
}

/// A fault-injecting HTTP proxy on 127.0.0.1 in front of `upstream`.
/// One request per connection (`Connection: close` both ways).
pub struct FaultProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(upstream: u16, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop2, hits2) = (stop.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let hits = hits2.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, upstream, port, fault, &hits);
                });
            }
        });
        FaultProxy { port, stop, hits }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many times the fault was applied so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

pub const BEARER_USER: &str = "ci";
pub const BEARER_PASSWORD: &str = "bearer-pass";
const BEARER_TOKEN: &str = "tok-lane-test";

fn respond(
    client: TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut c = client;
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    c.write_all(out.as_bytes())?;
    let _ = c.shutdown(Shutdown::Both);
    Ok(())
}

/// A request or response head: the first line and the headers, with
/// `Connection: close` in place of any Connection header.
fn closing_head(first_line: &str, headers: &[(String, String)]) -> String {
    let mut out = format!("{first_line}\r\n");
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn handle(
    client: TcpStream,
    upstream: u16,
    own_port: u16,
    fault: Fault,
    hits: &AtomicUsize,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    // Request head.
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let end = line == b"\r\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let (request_line, headers) = parse_head(&head[..head.len() - 4]);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let content_length: u64 = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let is_upload = (method == "PUT" || method == "PATCH") && path.contains("/blobs/uploads/");
    if fault == Fault::DropBlobUpload && is_upload && (content_length > 0 || chunked) {
        // Take a few bytes of the body, then vanish mid-upload.
        let mut buf = [0u8; 16];
        let _ = reader.read(&mut buf);
        hits.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut headers = headers;
    if fault == Fault::BearerAuth {
        use base64::Engine as _;
        let authorization = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if path.starts_with("/token") {
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{BEARER_USER}:{BEARER_PASSWORD}"))
            );
            hits.fetch_add(1, Ordering::SeqCst);
            return if authorization == basic && path.contains("scope=repository") {
                respond(
                    client,
                    "200 OK",
                    &[("Content-Type", "application/json".into())],
                    &format!(r#"{{"token":"{BEARER_TOKEN}"}}"#),
                )
            } else {
                respond(
                    client,
                    "401 Unauthorized",
                    &[],
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                )
            };
        }
        if authorization != format!("Bearer {BEARER_TOKEN}") {
            let challenge =
                format!(r#"Bearer realm="http://127.0.0.1:{own_port}/token",service="lane-test""#);
            return respond(
                client,
                "401 Unauthorized",
                &[
                    ("WWW-Authenticate", challenge),
                    ("Content-Type", "application/json".into()),
                ],
                r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            );
        }
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
    }
    let manifest_get = method == "GET" && path.contains("/manifests/");
    if fault == Fault::RedirectLoop && manifest_get {
        hits.fetch_add(1, Ordering::SeqCst);
        let hop = hits.load(Ordering::SeqCst);
        let base = path.split('?').next().unwrap_or_default();
        return respond(
            client,
            "307 Temporary Redirect",
            &[("Location", format!("{base}?hop={hop}"))],
            "",
        );
    }
    if let Fault::RedirectTo(port) = fault
        && manifest_get
    {
        hits.fetch_add(1, Ordering::SeqCst);
        return respond(
            client,
            "307 Temporary Redirect",
            &[("Location", format!("http://127.0.0.1:{port}{path}"))],
            "",
        );
    }
    if let Fault::BearerRealmOn2(port) = fault
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        hits.fetch_add(1, Ordering::SeqCst);
        return respond(
            client,
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.2:{port}/token",service="lane-test""#),
            )],
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
    }
    if fault == Fault::DenyPush && method == "POST" && path.contains("/blobs/uploads/") {
        hits.fetch_add(1, Ordering::SeqCst);
        return respond(
            client,
            "403 Forbidden",
            &[("Content-Type", "application/json".into())],
            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
        );
    }
    // Forward the head with Connection: close, then the rest of the body.
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(closing_head(&request_line, &headers).as_bytes())?;
    if chunked {
        // Relay the chunked body verbatim until its last chunk.
        loop {
            let mut size_line = Vec::new();
            reader.read_until(b'\n', &mut size_line)?;
            up.write_all(&size_line)?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&size_line)
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or("0"),
                16,
            )
            .unwrap_or(0);
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            up.write_all(&chunk)?;
            if size == 0 {
                break;
            }
        }
    } else if content_length > 0 {
        let mut body = (&mut reader).take(content_length);
        std::io::copy(&mut body, &mut up)?;
    }
    // Whole response (upstream closes after it).
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    let Some((rhead, rbody)) = split_head(&raw) else {
        let mut c = client;
        c.write_all(&raw)?;
        return Ok(());
    };
    let (status_line, mut rheaders) = parse_head(rhead);
    let mut body = rbody.to_vec();
    let is_manifest = path.contains("/manifests/");
    match fault {
        Fault::LieDigestHeader if is_manifest => {
            for (k, v) in rheaders.iter_mut() {
                if k.eq_ignore_ascii_case("docker-content-digest") {
                    *v = "sha256:0000000000000000000000000000000000000000000000000000000000000bad"
                        .into();
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        Fault::StripDigestHeader if is_manifest => {
            let before = rheaders.len();
            rheaders.retain(|(k, _)| !k.eq_ignore_ascii_case("docker-content-digest"));
            hits.fetch_add(before - rheaders.len(), Ordering::SeqCst);
        }
        Fault::AlterManifestBytes | Fault::AlterTagBytes
            if is_manifest
                && method == "GET"
                && status_line.contains(" 200")
                && (fault == Fault::AlterManifestBytes || !path.contains("/manifests/sha256:")) =>
        {
            body.push(b' ');
            hits.fetch_add(1, Ordering::SeqCst);
            for (k, v) in rheaders.iter_mut() {
                if k.eq_ignore_ascii_case("content-length") {
                    *v = body.len().to_string();
                }
            }
        }
        Fault::LocationOn2(port) if method == "POST" && path.contains("/blobs/uploads/") => {
            for (k, v) in rheaders.iter_mut() {
                if k.eq_ignore_ascii_case("location") {
                    let at = v.find("/v2/").unwrap_or(0);
                    *v = format!("http://127.0.0.2:{port}{}", &v[at..]);
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        _ => {}
    }
    let mut c = client;
    if fault == Fault::HugeManifest && manifest_get {
        hits.fetch_add(1, Ordering::SeqCst);
        rheaders.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        body = vec![b' '; 5 << 20];
    }
    c.write_all(closing_head(&status_line, &rheaders).as_bytes())?;
    if fault == Fault::TrickleManifest && manifest_get {
        hits.fetch_add(1, Ordering::SeqCst);
        for b in &body {
            c.write_all(std::slice::from_ref(b))?;
            c.flush()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    } else {
        c.write_all(&body)?;
    }
    c.flush()?;
    let _ = c.shutdown(Shutdown::Both);
    Ok(())
}

/// The builder id of a release under [`Creds::ci`].
pub const CI_BUILDER_ID: &str =
    "https://ci.example.com/platform/release-lane/.github/workflows/release.yml@refs/heads/main";

/// A credential setup for the lane process: an empty or given Docker
/// config in a temp dir (the real ~/.docker is never read), and env vars.
pub struct Creds {
    pub docker_config: TempDir,
    pub env: Vec<(String, String)>,
    /// Extra PATH entries (credential helpers).
    pub path_prepend: Option<PathBuf>,
}

impl Creds {
    /// No credentials anywhere.
    pub fn none() -> Creds {
        Creds {
            docker_config: TempDir::new("docker-config"),
            env: Vec::new(),
            path_prepend: None,
        }
    }

    /// LANE_REGISTRY_USER and LANE_REGISTRY_PASSWORD.
    pub fn env(user: &str, password: &str) -> Creds {
        let mut c = Creds::none();
        c.env = vec![
            ("LANE_REGISTRY_USER".into(), user.into()),
            ("LANE_REGISTRY_PASSWORD".into(), password.into()),
        ];
        c
    }

    /// A Docker config.json with this text.
    pub fn docker_config(json: &str) -> Creds {
        let c = Creds::none();
        fs::write(c.docker_config.path().join("config.json"), json).unwrap();
        c
    }

    /// A verified CI run besides these credentials: `f` becomes a CI
    /// checkout whose committed policy trusts the test issuer and the
    /// release workflow, and the run gets the environment GitHub Actions
    /// gives a job with `permissions: id-token: write` (a real token from
    /// the issuer). The lane's builder is then [`CI_BUILDER_ID`].
    pub fn ci(self, f: &Fixture) -> Creds {
        super::oidc::issuer().ci(self, f)
    }

    /// Runs `xtask --workspace ROOT ARGS` with these credentials only.
    pub fn xtask(&self, f: &Fixture, args: &[&str]) -> Output {
        run(&mut self.command(f, args))
    }

    /// The command `xtask --workspace ROOT ARGS` with these credentials
    /// only, to run or spawn.
    pub fn command(&self, f: &Fixture, args: &[&str]) -> std::process::Command {
        let mut cmd = f.command(args);
        cmd.env_remove("LANE_REGISTRY_USER")
            .env_remove("LANE_REGISTRY_PASSWORD")
            .env_remove("LANE_REGISTRY")
            .env("DOCKER_CONFIG", self.docker_config.path());
        if let Some(dir) = &self.path_prepend {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// A server on 127.0.0.2 (a second loopback address: another host) that
/// records the head of every request and answers 401 with a Basic
/// challenge, so a client holding a credential would send it.
pub struct Recorder2 {
    pub port: u16,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder2 {
    pub fn start() -> Recorder2 {
        let listener = TcpListener::bind("127.0.0.2:0").expect("binding 127.0.0.2");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    log.lock().unwrap().push(head);
                    let _ = respond(
                        conn,
                        "401 Unauthorized",
                        &[("WWW-Authenticate", r#"Basic realm="thief""#.into())],
                        "",
                    );
                });
            }
        });
        Recorder2 { port, requests }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.2:{}", self.port)
    }

    /// Every request head received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The request heads that carried an Authorization header.
    pub fn with_credentials(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|h| h.to_ascii_lowercase().contains("\nauthorization:"))
            .collect()
    }
}
