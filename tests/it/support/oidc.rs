//! A real OIDC issuer on 127.0.0.1 for the tests (issue 14): a discovery
//! document, a JWKS, and a token endpoint in GitHub Actions' request format
//! (`GET /token?api-version=2.0&audience=AUD` with
//! `Authorization: bearer REQUEST_TOKEN`, answered `{"value": "<jwt>"}`).
//! It signs with keys it generates at start: ES256 with p256 in this
//! process, RS256 with the `openssl` command line (an implementation
//! independent of the lane's verifier). A [`Fault`] makes it misbehave the
//! way each bootstrap failure looks.
//!
//! The claims are GitHub's (`repository`, `ref`, `sha`, `job_workflow_ref`,
//! `run_id`, ...). `sha` and `ref` are read from the run's checkout when
//! the token is requested, as GitHub gives the commit of the run.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::Generate as _;
use serde_json::{Value, json};

use crate::support::registry::Creds;
use crate::support::{Fixture, TempDir, git};

/// The CI server the test runs claim (`GITHUB_SERVER_URL`).
pub const SERVER: &str = "https://ci.example.com";
/// The audience the fixtures' policies name.
pub const AUDIENCE: &str = "release-lane";
/// The default repository of a run (`OWNER/REPO`).
pub const REPOSITORY: &str = "platform/release-lane";
const ES_KID: &str = "lane-test-es256";
const RS_KID: &str = "lane-test-rs256";

/// How the issuer signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    ES256,
    RS256,
}

/// What the issuer does wrong (`None`: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The token endpoint answers this status.
    Refuse(u16),
    /// The discovery document answers this status.
    Discovery(u16),
    /// The discovery document names another issuer.
    DiscoveryNamesOther,
    /// The discovery document names a `jwks_uri` nobody listens on.
    JwksUnreachable,
    /// Signed by a key the JWKS does not list, under its own kid.
    UnknownKid,
    /// Signed by a key the JWKS does not list, under the listed key's kid.
    BadSignature,
    /// `alg: none`, no signature.
    AlgNone,
    /// `iss` is another issuer.
    WrongIssuer,
    /// `aud` is not the requested audience.
    WrongAudience,
    /// Expired an hour ago.
    Expired,
    /// Valid only from an hour from now.
    NotYetValid,
    /// One claim set to this value (`repository`, `sha`, `ref`, ...).
    Claim(&'static str, String),
    /// The JWKS is 2 MiB (a key list padded with junk keys).
    HugeJwks,
    /// The discovery document redirects to plain http on 127.0.0.2.
    DiscoveryRedirectsAway,
}

/// One CI run the issuer will give tokens to.
struct Run {
    request_token: String,
    checkout: PathBuf,
    repository: String,
    run_id: String,
}

struct State {
    fault: Fault,
    runs: Vec<Run>,
    issued: Vec<String>,
}

struct RsaKey {
    _dir: TempDir,
    pem: PathBuf,
    n: String,
}

struct Keys {
    alg: Alg,
    es: SigningKey,
    rogue: SigningKey,
    rsa: Option<RsaKey>,
}

/// The issuer (see the module comment). Stops with the test process.
pub struct Issuer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    es_jwk: Value,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A value made at run time (it appears in no file the lane copies).
fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{label}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn es_jwk(key: &SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    let xy = point.as_bytes();
    assert_eq!(xy.len(), 65, "an uncompressed P-256 point");
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(&xy[1..33]), "y": b64(&xy[33..65]),
    })
}

/// A 2048-bit RSA key made by openssl; its modulus as base64url.
fn rsa_key() -> RsaKey {
    let dir = TempDir::new("oidc-rsa");
    let pem = dir.path().join("key.pem");
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem)
        .arg("2048")
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .expect("openssl");
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().strip_prefix("Modulus=").expect("Modulus=HEX");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    RsaKey {
        _dir: dir,
        pem,
        n: b64(&bytes),
    }
}

fn openssl_sign(pem: &Path, message: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-sign"])
        .arg(pem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

impl Issuer {
    /// An issuer signing with `alg`, serving until the test process ends.
    pub fn start(alg: Alg) -> Issuer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let keys = Keys {
            alg,
            es: SigningKey::try_generate().unwrap(),
            rogue: SigningKey::try_generate().unwrap(),
            rsa: (alg == Alg::RS256).then(rsa_key),
        };
        let es_jwk = es_jwk(&keys.es, ES_KID);
        let state = Arc::new(Mutex::new(State {
            fault: Fault::None,
            runs: Vec::new(),
            issued: Vec::new(),
        }));
        let shared = state.clone();
        let keys = Arc::new(keys);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (state, keys) = (shared.clone(), keys.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, port, &state, &keys);
                });
            }
        });
        Issuer {
            port,
            state,
            es_jwk,
        }
    }

    /// The issuer URL (what the policy's `[builder] issuer` names).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    /// Every ID token the issuer gave out.
    pub fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    /// Every request token of the runs registered so far.
    pub fn request_tokens(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.runs.iter().map(|r| r.request_token.clone()).collect()
    }

    /// The RFC 7638 thumbprint of the ES256 key, computed here with
    /// sha256sum (independent of the lane): `sha256:<hex>`.
    pub fn es_thumbprint(&self) -> String {
        let k = &self.es_jwk;
        let canonical = format!(
            "{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{}\",\"y\":\"{}\"}}",
            k["x"].as_str().unwrap(),
            k["y"].as_str().unwrap()
        );
        super::registry::sha256_of(canonical.as_bytes())
    }

    /// The workflow identity a run of `repository` has on `main`.
    pub fn workflow(repository: &str) -> String {
        format!("{SERVER}/{repository}/.github/workflows/release.yml@refs/heads/main")
    }

    /// Makes `f` a CI checkout of [`REPOSITORY`] whose policy trusts this
    /// issuer and the release workflow on main (committed), and returns
    /// `c` with the environment GitHub Actions gives a job with
    /// `permissions: id-token: write`.
    pub fn ci(&self, c: Creds, f: &Fixture) -> Creds {
        self.ci_as(c, f, REPOSITORY, "4242")
    }

    pub fn ci_as(&self, mut c: Creds, f: &Fixture, repository: &str, run_id: &str) -> Creds {
        self.trust(f, repository, &[Issuer::workflow(repository)]);
        for (k, v) in self.run_env(f, repository, run_id) {
            c.env.push((k, v));
        }
        c
    }

    /// Writes the issuer, the audience and `trusted` into the fixture's
    /// policy, points origin at `repository`, and commits.
    pub fn trust(&self, f: &Fixture, repository: &str, trusted: &[String]) {
        let path = f.path("ci/release-policy.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "version = 1\n".into());
        let mut policy: toml::Table = text.parse().expect("the fixture's policy parses");
        let mut builder = toml::Table::new();
        builder.insert("issuer".into(), self.url().into());
        builder.insert("audience".into(), AUDIENCE.into());
        builder.insert(
            "trusted".into(),
            toml::Value::Array(trusted.iter().map(|t| t.as_str().into()).collect()),
        );
        policy.insert("builder".into(), builder.into());
        f.write("ci/release-policy.toml", &toml::to_string(&policy).unwrap());
        let url = format!("{SERVER}/{repository}.git");
        let remotes = git(&f.root, &["remote"]);
        if remotes.lines().any(|r| r == "origin") {
            git(&f.root, &["remote", "set-url", "origin", &url]);
        } else {
            git(&f.root, &["remote", "add", "origin", &url]);
        }
        f.commit("CI identity: the test issuer and workflow");
    }

    /// Registers a run of `repository` checked out at `f` and returns the
    /// environment of its job (a fresh request token).
    pub fn run_env(&self, f: &Fixture, repository: &str, run_id: &str) -> Vec<(String, String)> {
        let request_token = unique("req");
        self.state.lock().unwrap().runs.push(Run {
            request_token: request_token.clone(),
            checkout: f.root.clone(),
            repository: repository.into(),
            run_id: run_id.into(),
        });
        let workflow = format!("{repository}/.github/workflows/release.yml@refs/heads/main");
        [
            ("GITHUB_ACTIONS", "true".to_string()),
            ("GITHUB_SERVER_URL", SERVER.to_string()),
            ("GITHUB_REPOSITORY", repository.to_string()),
            ("GITHUB_WORKFLOW_REF", workflow),
            ("GITHUB_RUN_ID", run_id.to_string()),
            ("GITHUB_RUN_ATTEMPT", "1".to_string()),
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                format!("{}/token?api-version=2.0", self.url()),
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", request_token),
            // What .github/workflows/release.yml passes.
            ("LANE_OIDC_AUDIENCE", AUDIENCE.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The environment of a spoofed CI run: GitHub's variables, no token.
pub fn spoofed_env(repository: &str) -> Vec<(String, String)> {
    [
        ("GITHUB_ACTIONS", "true".to_string()),
        ("GITHUB_SERVER_URL", SERVER.to_string()),
        ("GITHUB_REPOSITORY", repository.to_string()),
        (
            "GITHUB_WORKFLOW_REF",
            format!("{repository}/.github/workflows/release.yml@refs/heads/main"),
        ),
        ("GITHUB_RUN_ID", "4242".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn respond(mut c: TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap();
    write!(
        c,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    c.write_all(&body)?;
    c.flush()?;
    let _ = c.shutdown(Shutdown::Both);
    Ok(())
}

fn serve(conn: TcpStream, port: u16, state: &Mutex<State>, keys: &Keys) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let target = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let header = |name: &str| {
        head[1..].iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let base = format!("http://127.0.0.1:{port}");
    let fault = state.lock().unwrap().fault.clone();
    match path {
        "/.well-known/openid-configuration" => {
            if let Fault::Discovery(status) = fault {
                return respond(conn, status, &json!({ "message": "unavailable" }));
            }
            if fault == Fault::DiscoveryRedirectsAway {
                let mut c = conn;
                write!(
                    c,
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{port}/.well-known/openid-configuration\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                let _ = c.shutdown(Shutdown::Both);
                return Ok(());
            }
            let jwks_uri = if fault == Fault::JwksUnreachable {
                // A port that was free a moment ago: nobody listens there.
                let dead = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                format!("http://127.0.0.1:{dead}/jwks")
            } else {
                format!("{base}/jwks")
            };
            respond(
                conn,
                200,
                &json!({
                    "issuer": if fault == Fault::DiscoveryNamesOther {
                        "https://issuer.example.com"
                    } else {
                        base.as_str()
                    },
                    "jwks_uri": jwks_uri,
                    "subject_types_supported": ["public", "pairwise"],
                    "response_types_supported": ["id_token"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf",
                        "ref", "sha", "repository", "run_id", "run_attempt",
                        "job_workflow_ref", "workflow_ref", "event_name"],
                }),
            )
        }
        "/jwks" => {
            let mut jwks = vec![es_jwk(&keys.es, ES_KID)];
            if fault == Fault::HugeJwks {
                let junk = "x".repeat(1024);
                jwks.extend(
                    (0..2048)
                        .map(|i| json!({ "kty": "oct", "kid": format!("junk-{i}"), "k": junk })),
                );
            }
            if let Some(rsa) = &keys.rsa {
                jwks.push(json!({
                    "kty": "RSA", "kid": RS_KID, "alg": "RS256", "use": "sig",
                    "n": rsa.n, "e": "AQAB",
                }));
            }
            respond(conn, 200, &json!({ "keys": jwks }))
        }
        "/token" => {
            if let Fault::Refuse(status) = fault {
                return respond(conn, status, &json!({ "message": "refused" }));
            }
            let bearer = header("authorization").unwrap_or_default();
            let presented = bearer
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.to_string())
                .unwrap_or_default();
            let audience = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("audience="))
                .unwrap_or_default()
                .replace("%2F", "/")
                .replace("%3A", ":");
            let run = {
                let s = state.lock().unwrap();
                s.runs
                    .iter()
                    .find(|r| r.request_token == presented)
                    .map(|r| (r.checkout.clone(), r.repository.clone(), r.run_id.clone()))
            };
            let Some((checkout, repository, run_id)) = run else {
                return respond(conn, 401, &json!({ "message": "bad request token" }));
            };
            let token = mint(
                &base,
                &audience,
                &checkout,
                &repository,
                &run_id,
                &fault,
                keys,
            );
            state.lock().unwrap().issued.push(token.clone());
            respond(conn, 200, &json!({ "count": token.len(), "value": token }))
        }
        _ => respond(conn, 404, &json!({ "message": "not found" })),
    }
}

/// A token for a run, as GitHub Actions makes it (with the fault applied).
fn mint(
    base: &str,
    audience: &str,
    checkout: &Path,
    repository: &str,
    run_id: &str,
    fault: &Fault,
    keys: &Keys,
) -> String {
    let sha = git(checkout, &["rev-parse", "HEAD"]).trim().to_string();
    let git_ref = git(checkout, &["symbolic-ref", "HEAD"]).trim().to_string();
    let workflow = format!("{repository}/.github/workflows/release.yml@{git_ref}");
    let t = now();
    let (iat, nbf, exp) = match fault {
        Fault::Expired => (t - 7200, t - 7200, t - 3600),
        Fault::NotYetValid => (t + 3600, t + 3600, t + 7200),
        _ => (t, t, t + 300),
    };
    let mut claims = json!({
        "jti": unique("jti"),
        "sub": format!("repo:{repository}:ref:{git_ref}"),
        "aud": if *fault == Fault::WrongAudience { "someone-else" } else { audience },
        "iss": if *fault == Fault::WrongIssuer { "https://issuer.example.com" } else { base },
        "iat": iat, "nbf": nbf, "exp": exp,
        "ref": git_ref,
        "ref_type": "branch",
        "sha": sha,
        "repository": repository,
        "repository_owner": repository.split('/').next().unwrap_or_default(),
        "actor": "lane-test",
        "workflow": "release",
        "workflow_ref": workflow,
        "workflow_sha": sha,
        "job_workflow_ref": workflow,
        "job_workflow_sha": sha,
        "run_id": run_id,
        "run_number": "1",
        "run_attempt": "1",
        "event_name": "push",
        "runner_environment": "github-hosted",
    });
    if let Fault::Claim(name, value) = fault {
        claims[*name] = json!(value);
    }
    let (alg, kid) = match (fault, keys.alg) {
        (Fault::AlgNone, _) => ("none", ES_KID),
        (Fault::UnknownKid, _) => ("ES256", "lane-test-rogue"),
        (_, Alg::RS256) => ("RS256", RS_KID),
        (_, Alg::ES256) => ("ES256", ES_KID),
    };
    let header = json!({ "typ": "JWT", "alg": alg, "kid": kid });
    let signed = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let signature = match (fault, alg) {
        (Fault::AlgNone, _) => Vec::new(),
        (Fault::UnknownKid | Fault::BadSignature, _) => {
            let s: p256::ecdsa::Signature = keys.rogue.sign(signed.as_bytes());
            s.to_bytes().to_vec()
        }
        (_, "RS256") => openssl_sign(&keys.rsa.as_ref().unwrap().pem, signed.as_bytes()),
        _ => {
            let s: p256::ecdsa::Signature = keys.es.sign(signed.as_bytes());
            s.to_bytes().to_vec()
        }
    };
    format!("{signed}.{}", b64(&signature))
}

/// The test binary's shared ES256 issuer, started on first use.
pub fn issuer() -> &'static Issuer {
    static ISSUER: std::sync::OnceLock<Issuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(|| Issuer::start(Alg::ES256))
}
