//! Adapter to an OCI registry (Distribution API v2): the registry target,
//! credentials, the fail-fast preflight and publishing by digest.
//!
//! Async inside, sync outside: [`preflight`] creates a tokio current-thread
//! runtime and keeps it in the [`Remote`] it returns, so every later call on
//! that `Remote` runs on the runtime that owns its connections.
//!
//! Blob uploads go through oci-client. A few calls go straight through
//! reqwest because oci-client does not expose what the lane must see: the
//! `Docker-Content-Digest` response header of a manifest PUT or GET
//! (oci-client returns only the Location or a digest it already validated),
//! the size a blob HEAD reports (`blob_exists` returns a bool), cancelling
//! an upload session (no DELETE in its API), and a cross-repository mount's
//! answer (its `mount_blob` treats 202 as an error and leaves the upload
//! session the registry opened behind).
//!
//! No secret is ever printed: [`Secret`] and [`Credential`] redact themselves
//! in `Debug`, and error messages name the user and the credential source,
//! never the password.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use lane_core::distribution::{
    BlobRef, LocalImage, PublishReport, TagCheck, check_tag, tag_refusal,
};
use lane_core::evidence::MEDIA_MANIFEST;
use lane_core::id::{Digest, Tag};
use lane_core::layer::sha256;

/// Names the release registry when `--registry` is not given.
pub const ENV_REGISTRY: &str = "LANE_REGISTRY";
/// Environment variable naming the registry user (CI).
pub const ENV_USER: &str = "LANE_REGISTRY_USER";
/// Environment variable holding the registry password or token (CI).
pub const ENV_PASSWORD: &str = "LANE_REGISTRY_PASSWORD";
const DIGEST_HEADER: &str = "docker-content-digest";

/// Seconds one request to the registry may take, body included
/// (`LANE_REGISTRY_TIMEOUT`; default 300): a registry that trickles its
/// answer ends the run with an error, not a hang.
pub const ENV_TIMEOUT: &str = "LANE_REGISTRY_TIMEOUT";
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// How many redirects one request follows.
pub const MAX_REDIRECTS: usize = 5;

/// The configured per-request timeout.
fn request_timeout() -> Result<Duration> {
    match std::env::var(ENV_TIMEOUT) {
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => bail!("{ENV_TIMEOUT}={v:?} is not a whole number of seconds above 0"),
        },
    }
}

/// Redirects: at most [`MAX_REDIRECTS`]; to another host only for a blob
/// download (hosted registries serve blobs from storage elsewhere), and
/// then without credentials (reqwest drops `Authorization` when the host
/// changes). Any other request redirected to another host is refused.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let msg = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(msg);
        }
        let first = &attempt.previous()[0];
        let next = attempt.url();
        if let Err(e) =
            crate::adapters::urls::check(first, next.clone(), "the registry redirected to")
        {
            return attempt.error(format!("{e:#}"));
        }
        let same_host = next.host_str() == first.host_str()
            && next.port_or_known_default() == first.port_or_known_default();
        let blob_download = first.path().contains("/blobs/sha256:");
        if same_host || blob_download {
            return attempt.follow();
        }
        let msg = format!(
            "the registry redirected {} to another host ({}); the lane follows only blob downloads to another host, and never with credentials",
            first.path(),
            next.host_str().unwrap_or("?")
        );
        attempt.error(msg)
    })
}

/// A transport error in words; a timeout names the setting that bounds it.
fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        let secs = request_timeout()
            .map(|d| d.as_secs())
            .unwrap_or(DEFAULT_TIMEOUT_SECS);
        format!(
            "no complete answer within {secs} s ({ENV_TIMEOUT}): {}",
            error_chain(e)
        )
    } else {
        error_chain(e)
    }
}

/// `HOST[:PORT][/PREFIX]`: where images are published. Parsed once; every
/// value of this type is a valid target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTarget {
    host: String,
    prefix: Option<String>,
}

impl FromStr for RegistryTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage =
            "use HOST[:PORT][/PREFIX], e.g. 127.0.0.1:5000 or registry.example.com/platform";
        if s.contains("://") {
            return Err(format!(
                "registry {s:?} has a scheme; {usage} (plain HTTP is used for loopback hosts only)"
            ));
        }
        let (host, prefix) = match s.split_once('/') {
            Some((h, p)) => (h, Some(p.trim_end_matches('/'))),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(format!("registry {s:?} has no host; {usage}"));
        }
        let (name, port) =
            split_port(host).ok_or_else(|| format!("registry {s:?}: bad port; {usage}"))?;
        let name_ok = if let Some(v6) = name.strip_prefix('[') {
            v6.strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !name.is_empty()
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if !name_ok || port == Some(0) {
            return Err(format!("registry host {host:?} is invalid; {usage}"));
        }
        let prefix = match prefix {
            Some("") => None,
            Some(p) => {
                if !p.split('/').all(valid_path_component) {
                    return Err(format!(
                        "registry prefix {p:?} is invalid; use lowercase components such as platform/team"
                    ));
                }
                Some(p.to_string())
            }
            None => None,
        };
        Ok(RegistryTarget {
            host: host.to_ascii_lowercase(),
            prefix,
        })
    }
}

fn split_port(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if host.starts_with('[') {
        match host.rsplit_once("]:") {
            Some((n, p)) => (&host[..n.len() + 1], Some(p)),
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    match port {
        Some(p) => Some((name, Some(p.parse().ok()?))),
        None => Some((name, None)),
    }
}

fn valid_path_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl fmt::Display for RegistryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefix {
            Some(p) => write!(f, "{}/{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl RegistryTarget {
    /// `host[:port]`, as credentials and URLs use it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository an image's `repository` maps to on this registry.
    pub fn repository(&self, image_repository: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{image_repository}"),
            None => image_repository.to_string(),
        }
    }

    /// Loopback hosts (127.0.0.0/8, localhost, [::1]) are spoken to over
    /// plain HTTP, as Docker does; every other host over TLS.
    pub fn is_loopback(&self) -> bool {
        let (name, _) = split_port(&self.host).unwrap_or((&self.host, None));
        if name == "localhost" {
            return true;
        }
        if let Ok(v4) = name.parse::<std::net::Ipv4Addr>() {
            return v4.is_loopback();
        }
        name.strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .and_then(|n| n.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|a| a.is_loopback())
    }

    fn scheme(&self) -> &'static str {
        if self.is_loopback() { "http" } else { "https" }
    }
}

// ---------------------------------------------------------------------------
// Credentials

/// A password or token. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a credential came from; named in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Env,
    DockerConfig(PathBuf),
    Helper(String),
}

impl CredentialSource {
    /// What to check when authentication fails.
    fn hint(&self, host: &str) -> String {
        match self {
            CredentialSource::Env => format!("check {ENV_PASSWORD} or ~/.docker/config.json"),
            CredentialSource::DockerConfig(p) => format!(
                "check the auths entry for {host} in {} or run docker login {host}",
                p.display()
            ),
            CredentialSource::Helper(h) => {
                format!(
                    "check what docker-credential-{h} stores for {host}, or run docker login {host}"
                )
            }
        }
    }
}

/// A user name and secret for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub secret: Secret,
    pub source: CredentialSource,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("secret", &self.secret)
            .field("source", &self.source)
            .finish()
    }
}

/// The parts of Docker's `config.json` the lane reads.
#[derive(Debug, Default, serde::Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, serde::Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl fmt::Debug for DockerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DockerAuth(<redacted>)")
    }
}

/// What `config.json` says about one host.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigEntry {
    Inline { user: String, secret: Secret },
    Helper(String),
}

/// `https://host:5000/v1/` and `host:5000` name the same server.
fn normalise_server(s: &str) -> String {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or(s).to_ascii_lowercase()
}

/// Pure lookup in a parsed `config.json`, in Docker's order: a per-host
/// `credHelpers` entry, then an `auths` entry carrying a credential, then
/// the default `credsStore`.
pub fn config_entry(config: &DockerConfig, host: &str) -> Result<Option<ConfigEntry>> {
    let host = host.to_ascii_lowercase();
    if let Some((_, h)) = config
        .cred_helpers
        .iter()
        .find(|(k, _)| normalise_server(k) == host)
    {
        return Ok(Some(ConfigEntry::Helper(h.clone())));
    }
    if let Some((_, a)) = config
        .auths
        .iter()
        .find(|(k, a)| normalise_server(k) == host && (a.auth.is_some() || a.username.is_some()))
    {
        if let Some(auth) = a.auth.as_deref().filter(|s| !s.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    anyhow!("the auths entry for {host} is not base64 of user:password")
                })?;
            let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                anyhow!("the auths entry for {host} is not base64 of user:password")
            })?;
            return Ok(Some(ConfigEntry::Inline {
                user: user.to_string(),
                secret: Secret(pass.to_string()),
            }));
        }
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Ok(Some(ConfigEntry::Inline {
                user: u.clone(),
                secret: Secret(p.clone()),
            }));
        }
    }
    Ok(config
        .creds_store
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| ConfigEntry::Helper(s.clone())))
}

/// Parses Docker's `config.json` (`path` names it in errors; the message
/// never quotes the file, which holds secrets).
pub fn parse_docker_config(path: &str, text: &str) -> Result<DockerConfig> {
    serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{path} is not valid JSON: line {}, column {}",
            e.line(),
            e.column()
        )
    })
}

/// Parses what `docker-credential-NAME get` prints: `{"Username", "Secret"}`.
pub fn parse_helper_output(text: &str) -> Result<(String, Secret)> {
    #[derive(serde::Deserialize)]
    struct Out {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let out: Out = serde_json::from_str(text)
        .map_err(|_| anyhow!("the helper did not print {{\"Username\", \"Secret\"}} JSON"))?;
    Ok((out.username, Secret(out.secret)))
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".docker/config.json"))
}

/// Names more hosts (comma-separated `HOST[:PORT]`) that [`ENV_USER`] and
/// [`ENV_PASSWORD`] belong to, besides the release registry.
pub const ENV_CREDENTIAL_HOSTS: &str = "LANE_REGISTRY_CREDENTIAL_HOSTS";

/// The hosts of an explicit `--registry` this run was given.
static BOUND_HOSTS: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// Binds [`ENV_USER`] and [`ENV_PASSWORD`] to `host` too: a command calls
/// it with the host of an explicit `--registry`.
pub fn bind_env_credentials(host: &str) {
    BOUND_HOSTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(host.to_ascii_lowercase());
}

/// Whether the environment's credential belongs to `host`: the host of
/// `$LANE_REGISTRY`, of an explicit `--registry`, or one
/// `$LANE_REGISTRY_CREDENTIAL_HOSTS` names. Like Docker's and crane's
/// credentials, it is never sent to a host a reference merely names.
fn env_credential_belongs_to(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let named = |v: &str| {
        std::env::var(v)
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .any(|h| h == host)
    };
    let release_registry = std::env::var(ENV_REGISTRY)
        .ok()
        .and_then(|r| r.parse::<RegistryTarget>().ok())
        .is_some_and(|t| t.host().eq_ignore_ascii_case(&host));
    release_registry
        || named(ENV_CREDENTIAL_HOSTS)
        || BOUND_HOSTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&host)
}

/// Finds the credential for `host`: the environment ([`ENV_USER`] and
/// [`ENV_PASSWORD`]) when it belongs to `host` (the release registry's
/// host, or one named in [`ENV_CREDENTIAL_HOSTS`]), else Docker's
/// `config.json` entry for `host`. `None` when no source has one.
pub fn resolve_credential(host: &str) -> Result<Option<Credential>> {
    let user = std::env::var(ENV_USER).ok().filter(|s| !s.is_empty());
    let pass = crate::adapters::secrets::var(ENV_PASSWORD).filter(|s| !s.is_empty());
    match (user, pass) {
        (Some(_), Some(_)) if !env_credential_belongs_to(host) => {}
        (Some(user), Some(pass)) => {
            return Ok(Some(Credential {
                user,
                secret: Secret(pass),
                source: CredentialSource::Env,
            }));
        }
        (Some(_), None) => bail!(
            "{ENV_USER} is set but {ENV_PASSWORD} is not; set both, or neither to use ~/.docker/config.json"
        ),
        (None, Some(_)) => bail!(
            "{ENV_PASSWORD} is set but {ENV_USER} is not; set both, or neither to use ~/.docker/config.json"
        ),
        (None, None) => {}
    }
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config = parse_docker_config(&path.display().to_string(), &text)?;
    match config_entry(&config, host).with_context(|| format!("reading {}", path.display()))? {
        None => Ok(None),
        Some(ConfigEntry::Inline { user, secret }) => Ok(Some(Credential {
            user,
            secret,
            source: CredentialSource::DockerConfig(path),
        })),
        Some(ConfigEntry::Helper(name)) => run_helper(&name, host),
    }
}

/// The docker-credential-helpers protocol: `docker-credential-NAME get`,
/// the server on stdin, JSON on stdout.
fn run_helper(name: &str, host: &str) -> Result<Option<Credential>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("running the credential helper {program} named in the Docker config (is it installed and on PATH?)")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {program} get"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's "not found" answer means: no credential for this host.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "credential helper {program} failed for {host} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (user, secret) = parse_helper_output(&stdout)
        .with_context(|| format!("reading what {program} get printed for {host}"))?;
    Ok(Some(Credential {
        user,
        secret,
        source: CredentialSource::Helper(name.to_string()),
    }))
}

// ---------------------------------------------------------------------------
// Talking to the registry

/// How the registry wants requests authorised (from `WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value.
pub fn parse_challenge(value: &str) -> Challenge {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Basic;
    }
    let mut params = BTreeMap::new();
    let re = regex::Regex::new(r#"([A-Za-z]+)="([^"]*)""#).expect("static regex");
    for c in re.captures_iter(rest) {
        params.insert(c[1].to_ascii_lowercase(), c[2].to_string());
    }
    match params.remove("realm") {
        Some(realm) => Challenge::Bearer {
            realm,
            service: params.remove("service"),
        },
        None => Challenge::Basic,
    }
}

/// A registry that passed the preflight: reachable, credentials accepted,
/// push permission granted on every repository the run will publish to.
/// Blob uploads (and blob checks) of one publish in flight at once.
pub const UPLOADS_AT_ONCE: usize = 4;

/// What publishing one blob took.
enum BlobOutcome {
    /// The repository already held it.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded: the bytes sent.
    Uploaded(u64),
}

pub struct Remote {
    rt: tokio::runtime::Runtime,
    s: Session,
}

/// The connection state of a [`Remote`]; its async methods run on the
/// remote's runtime.
struct Session {
    target: RegistryTarget,
    base: String,
    http: reqwest::Client,
    oci: Client,
    credential: Option<Credential>,
    challenge: Challenge,
    /// Bearer tokens by repository (pull,push scope, or pull when
    /// `read_only`).
    tokens: std::sync::Mutex<BTreeMap<String, String>>,
    /// No push was asked for in the preflight: tokens are for pull only.
    read_only: bool,
    /// Blobs known to be in some repository of this registry (for mounts).
    known: std::sync::Mutex<BTreeMap<String, String>>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("target", &self.s.target)
            .field("credential", &self.s.credential)
            .finish_non_exhaustive()
    }
}

/// Runs every preflight check for publishing `repositories` (already mapped
/// through the target's prefix) before anything is built or pushed.
pub fn preflight(target: &RegistryTarget, repositories: &[String]) -> Result<Remote> {
    let credential = resolve_credential(target.host())?;
    let mut remote = Remote::connect(target, credential, Challenge::None)?;
    remote.s.read_only = repositories.is_empty();
    remote.rt.block_on(remote.s.preflight_async(repositories))?;
    Ok(remote)
}

impl Remote {
    /// A runtime and fresh HTTP clients for `target`; no request is made.
    fn connect(
        target: &RegistryTarget,
        credential: Option<Credential>,
        challenge: Challenge,
    ) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime for the registry client")?;
        let timeout = request_timeout()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .redirect(redirect_policy())
            .user_agent(concat!("release-lane-xtask/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("creating the HTTP client")?;
        let protocol = if target.is_loopback() {
            ClientProtocol::HttpsExcept(vec![target.host().to_string()])
        } else {
            ClientProtocol::Https
        };
        let oci = Client::try_from(ClientConfig {
            protocol,
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        })
        .map_err(|e| anyhow!("creating the registry client: {e}"))?;
        Ok(Remote {
            rt,
            s: Session {
                base: format!("{}://{}", target.scheme(), target.host()),
                target: target.clone(),
                http,
                oci,
                credential,
                challenge,
                tokens: Default::default(),
                known: Default::default(),
                read_only: false,
            },
        })
    }

    /// A second connection to the same registry, for another thread: what
    /// this one's preflight learned (credential, challenge, bearer tokens)
    /// without asking again; its own runtime and HTTP clients.
    pub fn another(&self) -> Result<Remote> {
        let r = Remote::connect(
            &self.s.target,
            self.s.credential.clone(),
            self.s.challenge.clone(),
        )?;
        let tokens = self
            .s
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        *r.s.tokens.lock().unwrap_or_else(|e| e.into_inner()) = tokens;
        let mut r = r;
        r.s.read_only = self.s.read_only;
        Ok(r)
    }
}

impl Remote {
    pub fn target(&self) -> &RegistryTarget {
        &self.s.target
    }

    /// Who the registry will see: `authenticated as USER` or `anonymous access`.
    pub fn who(&self) -> String {
        self.s.who()
    }

    /// Publishes one image layout to `repo` by digest: blobs, the manifest,
    /// the identity cross-check. No tag moves here (the store tags, each
    /// read back: [`Remote::tag_read_back`]).
    pub fn publish(&self, image: &LocalImage, repo: &str, quiet: bool) -> Result<PublishReport> {
        self.rt.block_on(self.s.publish_async(image, repo, quiet))
    }

    /// Points `tag` at the manifest `bytes` of `digest` and reads it back:
    /// headers and the hash of the fetched bytes must all name `digest`.
    pub fn tag_read_back(
        &self,
        repo: &str,
        tag: &Tag,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<TagCheck> {
        let back = self.put_read_back(&ManifestPut {
            repo,
            reference: tag.as_str(),
            media_type: MEDIA_MANIFEST,
            bytes,
        })?;
        let check = TagCheck {
            tag: tag.to_string(),
            pushed_digest_header: back.put_header,
            fetched_digest_header: back.get_header,
            resolved_sha256: back.sha256,
        };
        let failures = check_tag(digest, &check);
        if let Some(o) = lane_core::distribution::overtaken(digest, &check) {
            return Err(anyhow::Error::new(o));
        }
        if !failures.is_empty() {
            bail!(
                "{}",
                tag_refusal(
                    &format!("{}/{repo}:{tag}", self.s.host()),
                    digest,
                    &failures
                )
            );
        }
        Ok(check)
    }
}

/// Small reads and writes the release lane needs beyond publishing an image
/// (evidence artifacts, tags, referrers). Each runs on the remote's runtime.
impl Remote {
    /// `repo` as the registry names it (the target's prefix applied).
    pub fn repo(&self, image_repository: &str) -> String {
        self.s.target.repository(image_repository)
    }

    /// Uploads an in-memory blob unless the registry already has it.
    pub fn push_small_blob(&self, repo: &str, digest: &str, bytes: &[u8]) -> Result<()> {
        self.rt.block_on(async {
            if self.s.blob_size(repo, digest).await?.is_some() {
                return Ok(());
            }
            let reference = self.s.reference(repo, digest);
            self.s.oci_credentials(&reference).await;
            self.s
                .oci
                .push_blob(&reference, bytes.to_vec(), digest)
                .await
                .map(|_| ())
                .map_err(|e| {
                    anyhow!(
                        "uploading blob {digest} to {}/{repo}: {}",
                        self.s.host(),
                        oci_error_chain(&e)
                    )
                })
        })
    }

    /// PUT of exact manifest bytes under `m.reference` (digest or tag), then
    /// the GET of the same reference: what each reported and the hash of
    /// what came back. A registry's digest header is never trusted alone.
    pub fn put_read_back(&self, m: &ManifestPut) -> Result<ReadBack> {
        self.rt.block_on(self.s.put_read_back(m))
    }

    /// [`Remote::put_read_back`], failing unless what came back hashes to
    /// what was pushed. `what` names the document in the error (`the
    /// referrers index`).
    pub fn put_manifest_read_back(&self, m: &ManifestPut, what: &str) -> Result<()> {
        let back = self.put_read_back(m)?;
        let pushed = sha256(m.bytes).to_string();
        if back.sha256 != pushed {
            bail!(
                "{what} {}/{}:{} reads back as {}, not the {pushed} that was pushed",
                self.s.host(),
                m.repo,
                m.reference,
                back.sha256
            );
        }
        Ok(())
    }

    /// GET of a manifest's exact bytes, `None` when the registry has no such
    /// reference.
    pub fn fetch_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
    ) -> Result<Option<Vec<u8>>> {
        let found = self
            .rt
            .block_on(self.s.get_manifest_opt(repo, reference, media_type))?;
        Ok(found.map(|(bytes, _)| bytes))
    }

    /// GET of the repository's tag list, sorted; empty when the repository
    /// does not exist.
    pub fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        self.rt.block_on(async {
            let url = format!("{}/v2/{repo}/tags/list", self.s.base);
            let res = self.s.get(&url, repo, None, "listing the tags of").await?;
            match res.status() {
                StatusCode::OK => {
                    let what = format!("the tag list of {}/{repo}", self.s.host());
                    let body = read_body(res, MAX_TAG_LIST_BYTES, &what).await?;
                    let v: serde_json::Value =
                        serde_json::from_slice(&body).with_context(|| {
                            format!("the tag list of {}/{repo} is not JSON", self.s.host())
                        })?;
                    let mut tags: Vec<String> = v["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect();
                    tags.sort();
                    Ok(tags)
                }
                StatusCode::NOT_FOUND => Ok(Vec::new()),
                st => bail!(
                    "listing the tags of {}/{repo}: registry answered {st}",
                    self.s.host()
                ),
            }
        })
    }

    /// Uploads a blob from a file (streamed) unless the registry has it.
    pub fn push_blob_file(&self, repo: &str, blob: &BlobRef, path: &Path) -> Result<()> {
        self.rt.block_on(async {
            if self
                .s
                .blob_size(repo, blob.digest.as_str())
                .await?
                .is_some()
            {
                return Ok(());
            }
            self.s.upload_blob(repo, blob, path, true).await.map(|_| ())
        })
    }

    /// GET of a blob into the file `dest`, streamed and hashed on the way,
    /// refused past `cap` bytes; returns what the bytes hash to and how many
    /// there were (the caller compares them with what it expects).
    pub fn fetch_blob_to_file(
        &self,
        repo: &str,
        digest: &Digest,
        dest: &Path,
        cap: u64,
    ) -> Result<(Digest, u64)> {
        use std::io::Write as _;
        self.rt.block_on(async {
            let url = format!("{}/v2/{repo}/blobs/{digest}", self.s.base);
            let what = format!("reading blob {digest} from {}/{repo}", self.s.host());
            let mut res = self.s.get(&url, repo, None, &what).await?;
            if res.status() != StatusCode::OK {
                bail!("{what}: registry answered {}", res.status());
            }
            let file = std::fs::File::create(dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            let mut out = lane_core::layer::HashWriter::new(file);
            let mut n = 0u64;
            while let Some(chunk) = res
                .chunk()
                .await
                .map_err(|e| anyhow!("{what}: {}", transport_error(&e)))?
            {
                n += chunk.len() as u64;
                if n > cap {
                    bail!("{what}: the registry sent more than the lane reads ({cap} bytes)");
                }
                out.write_all(&chunk)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
            let (_, digest, count) = out.finish();
            Ok((digest, count))
        })
    }

    /// GET of a blob's bytes, refused above `limit` bytes (one of
    /// `lane_core::oci`'s caps).
    pub fn fetch_blob(&self, repo: &str, digest: &str, limit: u64) -> Result<Vec<u8>> {
        self.rt.block_on(async {
            let url = format!("{}/v2/{repo}/blobs/{digest}", self.s.base);
            let res = self
                .s
                .get(&url, repo, None, &format!("reading blob {digest} from"))
                .await?;
            if res.status() != StatusCode::OK {
                bail!(
                    "reading blob {digest} from {}/{repo}: registry answered {}",
                    self.s.host(),
                    res.status()
                );
            }
            let what = format!("blob {digest} from {}/{repo}", self.s.host());
            let bytes = read_body(res, limit, &what).await?;
            let actual = sha256(&bytes);
            if actual != digest {
                bail!(
                    "blob {digest} from {}/{repo} hashes to {actual}",
                    self.s.host()
                );
            }
            Ok(bytes)
        })
    }
}

/// A manifest PUT and the GET after it (`Session::put_read_back`).
pub struct ReadBack {
    /// `Docker-Content-Digest` of the PUT response.
    pub put_header: Option<String>,
    /// `Docker-Content-Digest` of the GET response.
    pub get_header: Option<String>,
    /// sha256 of the bytes the GET returned.
    pub sha256: String,
}

/// One manifest push: exact bytes under a digest or a tag.
#[derive(Debug, Clone, Copy)]
pub struct ManifestPut<'a> {
    pub repo: &'a str,
    /// A digest or a tag.
    pub reference: &'a str,
    pub media_type: &'a str,
    pub bytes: &'a [u8],
}

/// The outcome of a cross-repository blob mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// 201 Created: the blob is in the target repository, no byte moved.
    Mounted,
    /// Not mounted (why, in words): the caller uploads the blob.
    NotMounted(String),
}

impl Remote {
    /// Mounts blob `digest` of repository `from` into `to` (same registry).
    pub fn mount_blob(&self, to: &str, from: &str, digest: &str) -> Result<Mount> {
        self.rt.block_on(self.s.mount_blob(to, from, digest))
    }

    /// The size of blob `digest` in `repo`, `None` when it is not there.
    pub fn blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        self.rt.block_on(self.s.blob_size(repo, digest))
    }
}

/// How often a GET answered with a server error is sent again (after
/// 0.1 s, 0.3 s, 0.9 s).
const GET_RETRIES: u32 = 3;

impl Session {
    /// Sends an authorised GET; `what` names the request in errors. A
    /// server error (5xx) is retried [`GET_RETRIES`] times.
    async fn get(
        &self,
        url: &str,
        repo: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut delay = Duration::from_millis(100);
        for attempt in 0.. {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let res = self.send(req, repo, None, what).await?;
            // A GET changes nothing: a server error is asked again, a few
            // times (the Distribution registry answers 500 to a read of a
            // tag another client is writing at that moment).
            if res.status().is_server_error() && attempt < GET_RETRIES {
                tokio::time::sleep(delay).await;
                delay *= 3;
                continue;
            }
            return Ok(res);
        }
        unreachable!("the loop returns")
    }

    /// The one way a request reaches the registry: authorised for `repo`
    /// (for a mount, with pull on `mount_from` too) and sent; a transport
    /// failure reads `{what} HOST/REPO: cause`.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        repo: &str,
        mount_from: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response> {
        self.authorise(req, repo, mount_from)
            .await?
            .send()
            .await
            .map_err(|e| anyhow!("{what} {}/{repo}: {}", self.host(), transport_error(&e)))
    }

    /// Cancels an upload session the lane will not use. A registry that
    /// cannot cancel only keeps an empty session until it purges stale
    /// uploads, so a failed DELETE is not an error.
    /// DELETE of an upload session the registry opened. Its `Location` is
    /// judged by the one rule for handed-back URLs (`urls::handed`): the
    /// registry's own origin gets its credentials, another origin (https
    /// only) none, anything else is not contacted.
    async fn cancel_upload(&self, repo: &str, location: &str) {
        let Ok(base) = reqwest::Url::parse(&format!("{}/", self.base)) else {
            return;
        };
        match crate::adapters::urls::handed(&base, location, "the upload's Location") {
            Ok(crate::adapters::urls::Handed::SameHost(url)) => {
                let _ = self
                    .send(
                        self.http.delete(url.as_str()),
                        repo,
                        None,
                        "cancelling an upload to",
                    )
                    .await;
            }
            Ok(crate::adapters::urls::Handed::OtherHost(url)) => {
                let _ = self.http.delete(url.as_str()).send().await;
            }
            Err(_) => {}
        }
    }

    fn host(&self) -> &str {
        self.target.host()
    }

    async fn preflight_async(&mut self, repositories: &[String]) -> Result<()> {
        let host = self.host().to_string();
        // 1. Reachable.
        let url = format!("{}/v2/", self.base);
        let res = self.http.get(&url).send().await.map_err(|e| {
            anyhow!(
                "registry {host} unreachable: {} (check that it runs and that --registry {} is right)",
                error_chain(&e),
                self.target
            )
        })?;
        match res.status() {
            StatusCode::OK => {
                self.challenge = Challenge::None;
            }
            StatusCode::UNAUTHORIZED => {
                let value = res
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("Basic");
                self.challenge = parse_challenge(value);
            }
            s => bail!(
                "registry {host} answered GET /v2/ with {s}, expected 200 or 401; is {} an OCI registry?",
                self.target
            ),
        }
        // 2. Credentials present when the registry asks for them.
        if self.challenge != Challenge::None && self.credential.is_none() {
            let config = docker_config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.docker/config.json".into());
            bail!(
                "registry {host} requires authentication but no credentials were found: set {ENV_USER} and {ENV_PASSWORD}, or run docker login {host} (looked in {config})"
            );
        }
        // 3. Authentication succeeds.
        if let Some(cred) = &self.credential {
            let hint = cred.source.hint(&host);
            let user = cred.user.clone();
            match &self.challenge {
                Challenge::None => {}
                Challenge::Basic => {
                    let res = self
                        .http
                        .get(&url)
                        .basic_auth(&cred.user, Some(cred.secret.expose()))
                        .send()
                        .await
                        .map_err(|e| anyhow!("registry {host} unreachable: {}", error_chain(&e)))?;
                    match res.status() {
                        StatusCode::OK => {}
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            bail!("authentication failed for user {user} at {host} ({hint})")
                        }
                        s => bail!("registry {host} answered an authenticated GET /v2/ with {s}"),
                    }
                }
                Challenge::Bearer { .. } => {
                    if let Some(repo) = repositories.first() {
                        self.token_for(repo, None).await.map_err(|e| {
                            anyhow!(
                                "authentication failed for user {user} at {host} ({hint}): {e:#}"
                            )
                        })?;
                    }
                }
            }
        }
        // 4. Push permission: open an upload session and cancel it.
        for repo in repositories {
            self.check_push(repo).await?;
        }
        Ok(())
    }

    /// A bearer token with pull,push scope on `repo` and, for a
    /// cross-repository mount, pull scope on `mount_from`; fetched once.
    async fn token_for(&self, repo: &str, mount_from: Option<&str>) -> Result<String> {
        let key = match mount_from {
            Some(from) => format!("{repo} from {from}"),
            None => repo.to_string(),
        };
        if let Some(t) = self.tokens.lock().unwrap().get(&key) {
            return Ok(t.clone());
        }
        let Challenge::Bearer { realm, service } = &self.challenge else {
            bail!("the registry did not ask for a bearer token");
        };
        // Read-only sessions (verify, audit, a promote's source, bases, a
        // cache that is not written) ask for pull only.
        let actions = if self.read_only { "pull" } else { "pull,push" };
        let scope = format!("repository:{repo}:{actions}");
        let from_scope = mount_from.map(|f| format!("repository:{f}:pull"));
        let mut query = vec![("scope", scope.as_str())];
        if let Some(f) = &from_scope {
            query.push(("scope", f.as_str()));
        }
        if let Some(s) = service {
            query.push(("service", s.as_str()));
        }
        // The realm is judged by the one rule for handed-back URLs: the
        // registry's own origin, or another one over https (as Docker
        // allows a token service on another host); never plain http to
        // another host, never userinfo. The credential sent is this
        // registry's own, never another host's.
        let base = reqwest::Url::parse(&format!("{}/", self.base))
            .map_err(|e| anyhow!("the registry's URL {}: {e}", self.base))?;
        let mut url = crate::adapters::urls::handed(&base, realm, "the registry's token realm")?
            .url()
            .clone();
        url.query_pairs_mut().extend_pairs(query);
        let mut req = self.http.get(url);
        if let Some(c) = &self.credential {
            req = req.basic_auth(&c.user, Some(c.secret.expose()));
        }
        let res = req
            .send()
            .await
            .map_err(|e| anyhow!("token service {realm} unreachable: {}", error_chain(&e)))?;
        if !res.status().is_success() {
            bail!("the token service {realm} answered {}", res.status());
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_body(
            res,
            MAX_TOKEN_BYTES,
            &format!("the token service {realm}'s answer"),
        )
        .await?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| anyhow!("the token service {realm} sent no token: {e}"))?;
        let t = t
            .token
            .or(t.access_token)
            .ok_or_else(|| anyhow!("the token service {realm} sent no token"))?;
        self.tokens.lock().unwrap().insert(key, t.clone());
        Ok(t)
    }

    /// Adds the registry's authorisation for `repo` to a request; a token
    /// for a mount also grants pull on `mount_from`.
    async fn authorise(
        &self,
        req: reqwest::RequestBuilder,
        repo: &str,
        mount_from: Option<&str>,
    ) -> Result<reqwest::RequestBuilder> {
        Ok(match (&self.challenge, &self.credential) {
            (Challenge::None, _) => req,
            (Challenge::Basic, Some(c)) => req.basic_auth(&c.user, Some(c.secret.expose())),
            (Challenge::Basic, None) => req,
            (Challenge::Bearer { .. }, _) => {
                let t = self.token_for(repo, mount_from).await?;
                req.header(AUTHORIZATION, format!("Bearer {t}"))
            }
        })
    }

    fn who(&self) -> String {
        match &self.credential {
            Some(c) if self.challenge != Challenge::None => format!("authenticated as {}", c.user),
            _ => "anonymous access".to_string(),
        }
    }

    async fn check_push(&self, repo: &str) -> Result<()> {
        let host = self.host();
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let req = self.http.post(&url).header(CONTENT_LENGTH, "0");
        let res = self.send(req, repo, None, "starting an upload to").await?;
        match res.status() {
            StatusCode::ACCEPTED => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => bail!(
                "{} but not allowed to push to {repo} at {host} (registry answered {s} to starting an upload); ask for push access or choose another --registry prefix",
                self.who()
            ),
            s => bail!("registry {host} refused to start an upload to {repo} ({s})"),
        }
        let location = res
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                anyhow!("registry {host} started an upload to {repo} without a Location header")
            })?;
        // Cancel the session so the probe leaves nothing behind.
        self.cancel_upload(repo, location).await;
        Ok(())
    }

    /// Cross-repository blob mount (OCI distribution spec):
    /// `POST /v2/<to>/blobs/uploads/?mount=<digest>&from=<from>`. 201: the
    /// registry linked the blob it already holds into `to`, no byte moved.
    /// 202: it started an upload session instead (it cannot or will not
    /// mount); the session is cancelled and the caller uploads. Any other
    /// answer is not a mount either, with the status as the reason.
    async fn mount_blob(&self, to: &str, from: &str, digest: &str) -> Result<Mount> {
        let host = self.host();
        let url = reqwest::Url::parse_with_params(
            &format!("{}/v2/{to}/blobs/uploads/", self.base),
            &[("mount", digest), ("from", from)],
        )
        .map_err(|e| anyhow!("mounting blob {digest} into {host}/{to}: {e}"))?;
        let req = self.http.post(url).header(CONTENT_LENGTH, "0");
        let what = format!("mounting blob {digest} from {from} into");
        let res = self.send(req, to, Some(from), &what).await?;
        match res.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => {
                // An upload session we will not use.
                if let Some(location) = res.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                    self.cancel_upload(to, location).await;
                }
                Ok(Mount::NotMounted(
                    "the registry answered 202 (an upload session, not a mount)".into(),
                ))
            }
            s => Ok(Mount::NotMounted(format!("the registry answered {s}"))),
        }
    }

    fn reference(&self, repo: &str, digest: &str) -> Reference {
        Reference::with_digest(
            self.host().to_string(),
            repo.to_string(),
            digest.to_string(),
        )
    }

    /// Gives oci-client the credentials for an upload. A registry that
    /// asked for none in the preflight gets none: oci-client would
    /// otherwise ask `/v2/` for a challenge before every upload.
    async fn oci_credentials(&self, reference: &Reference) {
        if self.challenge != Challenge::None {
            self.oci
                .store_auth_if_needed(reference.resolve_registry(), &self.oci_auth())
                .await;
        }
    }

    fn oci_auth(&self) -> RegistryAuth {
        match &self.credential {
            Some(c) if self.challenge != Challenge::None => {
                RegistryAuth::Basic(c.user.clone(), c.secret.expose().to_string())
            }
            _ => RegistryAuth::Anonymous,
        }
    }

    /// HEAD of a blob: its size if present.
    async fn blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let what = format!("checking blob {digest} in");
        let res = self.send(self.http.head(&url), repo, None, &what).await?;
        match res.status() {
            StatusCode::OK => Ok(Some(
                res.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "registry {} sent no Content-Length for blob {digest}",
                            self.host()
                        )
                    })?,
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => bail!(
                "checking blob {digest} in {}/{repo}: registry answered {s}",
                self.host()
            ),
        }
    }

    /// PUT of a manifest's exact bytes; returns the reported digest header.
    async fn put_manifest(&self, m: &ManifestPut<'_>) -> Result<Option<String>> {
        let ManifestPut {
            repo,
            reference,
            media_type,
            bytes,
        } = *m;
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let req = self
            .http
            .put(&url)
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec());
        let what = format!("pushing the manifest {reference} to");
        let res = self.send(req, repo, None, &what).await?;
        let status = res.status();
        let header = digest_header(res.headers());
        if status != StatusCode::CREATED {
            let body = read_body(res, MAX_ERROR_BODY_BYTES, "the error body")
                .await
                .unwrap_or_default();
            bail!(
                "pushing the manifest to {}/{repo}:{reference}: registry answered {status}: {}",
                self.host(),
                error_body(&body)
            );
        }
        Ok(header)
    }

    /// PUT of exact manifest bytes under `reference`, then the GET of the
    /// same reference: what each reported and the hash of what came back.
    async fn put_read_back(&self, m: &ManifestPut<'_>) -> Result<ReadBack> {
        let put_header = self.put_manifest(m).await?;
        let (fetched, get_header) = self.get_manifest(m.repo, m.reference, m.media_type).await?;
        Ok(ReadBack {
            put_header,
            get_header,
            sha256: sha256(&fetched).to_string(),
        })
    }

    /// GET of a manifest: the exact bytes and the reported digest header.
    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
    ) -> Result<(Vec<u8>, Option<String>)> {
        self.get_manifest_opt(repo, reference, media_type)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "reading back {}/{repo}:{reference}: registry answered 404 Not Found",
                    self.host()
                )
            })
    }

    /// GET of a manifest, `None` when the registry has no such reference.
    async fn get_manifest_opt(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let res = self
            .get(&url, repo, Some(media_type), "reading back")
            .await?;
        let status = res.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let header = digest_header(res.headers());
        if status != StatusCode::OK {
            bail!(
                "reading back {}/{repo}:{reference}: registry answered {status}",
                self.host()
            );
        }
        let what = format!("the manifest {}/{repo}:{reference}", self.host());
        let bytes = read_body(res, lane_core::oci::MAX_MANIFEST_BYTES, &what).await?;
        Ok(Some((bytes, header)))
    }

    /// Uploads one blob from the layout with oci-client, streaming the file.
    async fn upload_blob(
        &self,
        repo: &str,
        blob: &BlobRef,
        path: &Path,
        quiet: bool,
    ) -> Result<u64> {
        let reference = self.reference(repo, blob.digest.as_str());
        self.oci_credentials(&reference).await;
        let bar = crate::report::Reporter::new(quiet).bar(blob.size, 0, crate::report::BYTES_BAR);
        bar.set_message(format!("uploading {}", short(blob.digest.as_str())));
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream = {
            let bar = bar.clone();
            let counted = counted.clone();
            futures_util::stream::unfold(Some(file), move |file| {
                let bar = bar.clone();
                let counted = counted.clone();
                async move {
                    let mut file = file?;
                    let mut buf = vec![0u8; 1 << 20];
                    match file.read(&mut buf) {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            bar.inc(n as u64);
                            counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            Some((Ok(bytes::Bytes::from(buf)), Some(file)))
                        }
                        Err(e) => Some((
                            Err(oci_client::errors::OciDistributionError::IoError(e)),
                            None,
                        )),
                    }
                }
            })
        };
        let result = self
            .oci
            .push_blob_stream(&reference, stream, blob.digest.as_str(), Some(blob.size))
            .await;
        bar.finish_and_clear();
        result.map_err(|e| {
            anyhow!(
                "uploading blob {} ({} bytes) to {}/{repo} failed: {} (nothing was tagged; run the publish again)",
                blob.digest,
                blob.size,
                self.host(),
                oci_error_chain(&e)
            )
        })?;
        Ok(counted.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// One blob of a layout into `repo`: already there (same size), mounted
    /// from a repository this run pushed it to, or uploaded.
    async fn push_layout_blob(
        &self,
        image: &LocalImage,
        repo: &str,
        blob: &BlobRef,
        quiet: bool,
    ) -> Result<BlobOutcome> {
        let host = self.host().to_string();
        let reporter = crate::report::Reporter::new(quiet);
        match self.blob_size(repo, blob.digest.as_str()).await? {
            Some(size) if size == blob.size => return Ok(BlobOutcome::Present),
            Some(size) => bail!(
                "registry {host} holds blob {} in {repo} with {size} bytes, but the layout's blob has {}; the registry's storage is inconsistent",
                blob.digest,
                blob.size
            ),
            None => {}
        }
        // Cross-repository mount when this run already has the blob elsewhere.
        let source = self
            .known
            .lock()
            .unwrap()
            .get(blob.digest.as_str())
            .cloned();
        if let Some(from) = source.filter(|f| f != repo)
            && self.mount_blob(repo, &from, blob.digest.as_str()).await? == Mount::Mounted
        {
            reporter.say(format!("  mounted {} from {from}", blob.digest.short()));
            return Ok(BlobOutcome::Mounted);
        }
        let path = image.blob_path(&blob.digest);
        reporter.say(format!(
            "  uploading {} ({} bytes)",
            short(blob.digest.as_str()),
            blob.size
        ));
        let n = self.upload_blob(repo, blob, &path, quiet).await?;
        crate::adapters::fault::point(crate::adapters::fault::PUBLISH_BLOB_STORED);
        Ok(BlobOutcome::Uploaded(n))
    }

    async fn publish_async(
        &self,
        image: &LocalImage,
        repo: &str,
        quiet: bool,
    ) -> Result<PublishReport> {
        use lane_core::distribution::{BlobStats, CrossCheck, Observed, check_digest};
        let host = self.host().to_string();
        let mut stats = BlobStats::default();
        // At most UPLOADS_AT_ONCE blobs in flight; outcomes in blob order.
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(
            image
                .blobs
                .iter()
                .map(|blob| self.push_layout_blob(image, repo, blob, quiet)),
        )
        .buffered(UPLOADS_AT_ONCE)
        .try_collect()
        .await?;
        for o in outcomes {
            match o {
                BlobOutcome::Present => stats.skipped += 1,
                BlobOutcome::Mounted => stats.mounted += 1,
                BlobOutcome::Uploaded(n) => {
                    stats.uploaded += 1;
                    stats.bytes_uploaded += n;
                }
            }
        }
        for blob in &image.blobs {
            self.known
                .lock()
                .unwrap()
                .insert(blob.digest.to_string(), repo.to_string());
        }
        // The manifest, by digest, exactly as built, read back; the size of
        // every blob it names checked at the same time (independent
        // requests: the cross-check below needs both).
        let digest = &image.manifest_digest;
        let media_type = &image.manifest_media_type;
        let put = ManifestPut {
            repo,
            reference: digest.as_str(),
            media_type,
            bytes: &image.manifest,
        };
        let manifest = self.put_read_back(&put);
        let blob_sizes = futures_util::stream::iter(image.blobs.iter().map(|blob| async {
            Ok::<_, anyhow::Error>((
                blob.clone(),
                self.blob_size(repo, blob.digest.as_str()).await?,
            ))
        }))
        .buffered(UPLOADS_AT_ONCE)
        .try_collect::<Vec<_>>();
        let (back, blob_sizes) = futures_util::future::try_join(manifest, blob_sizes).await?;
        crate::adapters::fault::point(crate::adapters::fault::PUBLISH_MANIFEST_STORED);
        let observed = Observed {
            pushed_digest_header: back.put_header,
            fetched_digest_header: back.get_header,
            fetched_sha256: back.sha256,
            blobs: blob_sizes,
        };
        let failures = check_digest(digest, &observed);
        let location = format!("{host}/{repo}@{digest}");
        if !failures.is_empty() {
            bail!(
                "identity cross-check failed for {location}; no tag was applied:\n  - {}",
                failures.join("\n  - ")
            );
        }
        Ok(PublishReport {
            image: image.name.clone(),
            registry: Some(host.clone()),
            repository: repo.to_string(),
            reference: location,
            digest: digest.clone(),
            tags: Vec::new(),
            blobs: stats,
            cross_check: CrossCheck {
                ok: true,
                pushed_digest_header: observed.pushed_digest_header,
                fetched_digest_header: observed.fetched_digest_header,
                fetched_sha256: observed.fetched_sha256,
                blobs_verified: image.blobs.len() as u64,
                tags: Vec::new(),
            },
        })
    }
}

/// Most bytes of a tag list the lane reads.
pub const MAX_TAG_LIST_BYTES: u64 = 16 << 20;

/// Most bytes of a token service's answer the lane reads.
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Most bytes of a registry's error body the lane reads; [`error_body`]
/// shows less.
pub const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;

/// Most characters of an error body a message shows.
const ERROR_BODY_SHOWN: usize = 512;

/// A response body, refused (with the cap named) once it passes `limit`
/// bytes: by its Content-Length before reading, by counting while reading
/// (a registry may send no length, or a false one).
async fn read_body(mut res: reqwest::Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    if let Some(n) = res.content_length() {
        lane_core::oci::check_size(what, n, limit)?;
    }
    let mut out = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| anyhow!("reading {what}: {}", transport_error(&e)))?
    {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            bail!(
                "{what} is more than {limit} bytes, more than the lane reads (docs/fault-matrix-parsers.md)"
            );
        }
    }
    Ok(out)
}

/// A registry error body in one line: the `errors` of the Distribution
/// specification (`CODE: message`), else the text itself, shortened.
pub fn error_body(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let one: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match one.char_indices().nth(ERROR_BODY_SHOWN) {
        Some((cut, _)) => format!("{}...", &one[..cut]),
        None if one.is_empty() => "(no body)".to_string(),
        None => one,
    }
}

fn digest_header(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `sha256:0123456789ab`, for progress lines.
pub fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// The error and its sources, one line, without URL query strings (upload
/// session state is long and says nothing to a person).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    let query = regex::Regex::new(r"\?[^\s)]*").expect("static regex");
    query.replace_all(&s, "").into_owned()
}

fn oci_error_chain(e: &oci_client::errors::OciDistributionError) -> String {
    error_chain(e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_secret_variables_are_those_the_lane_reads() {
        let names = crate::adapters::secrets::SECRET_VARS;
        assert!(names.contains(&ENV_PASSWORD));
        assert!(names.contains(&crate::adapters::oidc::ENV_REQUEST_TOKEN));
        assert!(names.contains(&lane_core::signing::ENV_KEY));
    }

    use super::*;

    #[test]
    fn targets_parse_and_choose_the_scheme() {
        let t: RegistryTarget = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            (t.host(), t.is_loopback(), t.scheme()),
            ("127.0.0.1:5000", true, "http")
        );
        assert_eq!(t.repository("platform/hello"), "platform/hello");
        let t: RegistryTarget = "registry.example.com/team/x".parse().unwrap();
        assert_eq!((t.host(), t.is_loopback()), ("registry.example.com", false));
        assert_eq!(t.repository("hello"), "team/x/hello");
        assert_eq!(t.to_string(), "registry.example.com/team/x");
        assert!(
            "localhost:5000"
                .parse::<RegistryTarget>()
                .unwrap()
                .is_loopback()
        );
        assert!(
            "[::1]:5000"
                .parse::<RegistryTarget>()
                .unwrap()
                .is_loopback()
        );
        assert!("127.3.4.5".parse::<RegistryTarget>().unwrap().is_loopback());
        assert!(
            !"10.0.0.1:5000"
                .parse::<RegistryTarget>()
                .unwrap()
                .is_loopback()
        );
        assert!(
            !"localhost.example.com"
                .parse::<RegistryTarget>()
                .unwrap()
                .is_loopback()
        );
        for bad in [
            "",
            "http://127.0.0.1:5000",
            "host:port",
            "host:0",
            "/x",
            "host/Upper",
            "a..b",
            "host:5000/",
        ] {
            if bad == "host:5000/" {
                assert!(bad.parse::<RegistryTarget>().is_ok());
                continue;
            }
            assert!(
                bad.parse::<RegistryTarget>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn docker_config_lookup_follows_dockers_order() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("ci:pw:with:colons");
        let config: DockerConfig = serde_json::from_str(&format!(
            r#"{{"auths":{{"http://127.0.0.1:5000/v2/":{{"auth":"{b64}"}},"other:1":{{}}}},
                "credHelpers":{{"helped.example.com":"pass"}},"credsStore":"desktop"}}"#
        ))
        .unwrap();
        assert_eq!(
            config_entry(&config, "127.0.0.1:5000").unwrap(),
            Some(ConfigEntry::Inline {
                user: "ci".into(),
                secret: Secret("pw:with:colons".into())
            })
        );
        assert_eq!(
            config_entry(&config, "helped.example.com").unwrap(),
            Some(ConfigEntry::Helper("pass".into()))
        );
        // An empty auths entry (as Docker writes with a store) falls to the store.
        assert_eq!(
            config_entry(&config, "other:1").unwrap(),
            Some(ConfigEntry::Helper("desktop".into()))
        );
        let empty = DockerConfig::default();
        assert_eq!(config_entry(&empty, "x").unwrap(), None);
        let bad: DockerConfig = serde_json::from_str(r#"{"auths":{"x":{"auth":"%%%"}}}"#).unwrap();
        assert!(config_entry(&bad, "x").is_err());
    }

    #[test]
    fn helper_output_and_secrets_are_redacted() {
        let (u, s) =
            parse_helper_output(r#"{"ServerURL":"x","Username":"ci","Secret":"hunter2"}"#).unwrap();
        assert_eq!(u, "ci");
        let c = Credential {
            user: u,
            secret: s,
            source: CredentialSource::Helper("pass".into()),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(parse_helper_output("not json").is_err());
    }

    #[test]
    fn error_lines_drop_url_queries() {
        let e = std::io::Error::other(
            "error sending request for url (http://h/v2/r/blobs/uploads/u?_state=abc&digest=sha256%3A1)",
        );
        assert_eq!(
            error_chain(&e),
            "error sending request for url (http://h/v2/r/blobs/uploads/u)"
        );
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(parse_challenge(r#"Basic realm="r""#), Challenge::Basic);
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="reg",scope="x""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("reg".into())
            }
        );
    }

    /// Hostile registry inputs (docs/fault-matrix-parsers.md): `config.json`, helper
    /// output, `WWW-Authenticate`, error bodies, registry names. No panic;
    /// errors name the file and never quote a secret.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        fn config(cases: u32) -> Config {
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            }
        }

        const PATH: &str = "/home/u/.docker/config.json";
        const SAMPLE: &str = r#"{"auths":{"https://r.example.com/v1/":{"auth":"dXNlcjpzM2NyZXQ="},"b:5000":{"username":"u","password":"s3cret"}},"credsStore":"desktop","credHelpers":{"c.example.com":"ecr"}}"#;

        fn mutate(text: &str, at: usize, with: &str, cut: usize) -> String {
            let mut b = text.as_bytes().to_vec();
            let at = at % (b.len() + 1);
            b.splice(at..(at + cut).min(b.len()), with.bytes());
            String::from_utf8_lossy(&b).into_owned()
        }

        fn check_config(text: &str) -> Result<(), TestCaseError> {
            match parse_docker_config(PATH, text) {
                Ok(c) => {
                    for host in ["r.example.com", "b:5000", "c.example.com", "x"] {
                        if let Err(e) = config_entry(&c, host) {
                            let message = format!("{e:#}");
                            prop_assert!(!message.contains("s3cret"), "{}", message);
                        }
                    }
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    prop_assert!(message.contains(PATH), "{}", message);
                    prop_assert!(!message.contains("s3cret"), "{}", message);
                }
            }
            Ok(())
        }

        #[test]
        fn the_sample_config_reads() {
            let c = parse_docker_config(PATH, SAMPLE).unwrap();
            assert!(matches!(
                config_entry(&c, "r.example.com").unwrap(),
                Some(ConfigEntry::Inline { .. })
            ));
        }

        #[test]
        fn error_bodies_are_one_short_line() {
            let body = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
            assert_eq!(
                error_body(body),
                "DENIED: requested access to the resource is denied"
            );
            let long = "x\n".repeat(10_000);
            let shown = error_body(long.as_bytes());
            assert!(shown.len() < 600 && !shown.contains('\n'), "{shown}");
            assert_eq!(error_body(b""), "(no body)");
        }

        proptest! {
            #![proptest_config(config(256))]
            #[test]
            fn docker_config_arbitrary(text in any::<String>()) {
                check_config(&text)?;
            }

            #[test]
            fn docker_config_mutated(at in any::<usize>(), with in "[\"{}:,a-z0-9=%\\\\]{0,6}", cut in 0usize..8) {
                check_config(&mutate(SAMPLE, at, &with, cut))?;
            }

            #[test]
            fn helper_output_arbitrary(text in any::<String>(), at in any::<usize>(), with in "[\"{}:,]{0,3}") {
                let sample = r#"{"ServerURL":"r","Username":"u","Secret":"s3cret"}"#;
                for t in [text, mutate(sample, at, &with, 2)] {
                    if let Err(e) = parse_helper_output(&t) {
                        let message = format!("{e:#}");
                        prop_assert!(!message.contains("s3cret"));
                    }
                }
            }

            #[test]
            fn challenges_arbitrary(value in any::<String>(), shaped in "(Bearer|Basic|bearer)? ?([a-z]{1,6}=\"[^\"]{0,12}\"?,? ?){0,4}") {
                for v in [value, shaped] {
                    if let Challenge::Bearer { realm, .. } = parse_challenge(&v) {
                        prop_assert!(v.contains(&realm));
                    }
                }
            }

            #[test]
            fn error_bodies_arbitrary(body in prop::collection::vec(any::<u8>(), 0..2048), text in any::<String>()) {
                for b in [body, format!(r#"{{"errors":[{{"code":"{text}","message":"{text}"}}]}}"#).into_bytes()] {
                    let shown = error_body(&b);
                    prop_assert!(!shown.is_empty() && shown.chars().count() <= 515);
                    prop_assert!(!shown.contains('\n'));
                }
            }

            #[test]
            fn registry_targets_arbitrary(s in any::<String>(), shaped in "[a-z0-9.:/\\[\\]-]{0,30}") {
                let _ = s.parse::<RegistryTarget>();
                let _ = shaped.parse::<RegistryTarget>();
            }
        }
    }
}
