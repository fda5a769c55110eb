//! The real Distribution registry (`docker-registry serve CONFIG`, Debian
//! package docker-registry) on 127.0.0.1 with a free port and its storage in
//! a directory, with or without htpasswd auth (`htpasswd`, Debian package
//! apache2-utils); killed on drop. `cargo xtask bench` publishes to it, and
//! the end-to-end tests run against it.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// CPU seconds (user and system) of process `pid` (`self` for this one)
/// from `/proc/PID/stat`; with `children`, those of its waited-for
/// children too (git, cargo).
pub fn cpu_seconds(pid: &str, children: bool) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let f = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| {
            v.parse::<u64>()
                .with_context(|| format!("{path}: {v:?} is not a count of clock ticks"))
        })
        .collect::<Result<Vec<u64>>>()?;
    if f.len() < 4 {
        bail!("{path}: fewer fields than expected");
    }
    let ticks = f[0] + f[1] + if children { f[2] + f[3] } else { 0 };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) gave {hz}: no clock tick rate to read {path} with");
    }
    Ok(ticks as f64 / hz as f64)
}

/// A running registry, killed on drop.
pub struct RegistryServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    auth: Option<(String, String)>,
}

/// A port nothing listens on right now (another process may take it before
/// it is used).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RegistryServer {
    /// Starts a registry whose configuration, log (`registry.log`) and
    /// storage (`storage/`) live in `dir` (created if missing); with htpasswd
    /// auth for one `(user, password)` when given. Returns once `GET /v2/`
    /// answers.
    pub fn start(dir: &Path, auth: Option<(&str, &str)>) -> Result<RegistryServer> {
        RegistryServer::start_with(dir, auth, false)
    }

    /// [`RegistryServer::start`] without auth, with the registry's access
    /// log (one line a request, with the client's user agent) in
    /// `registry.log`: [`RegistryServer::log`].
    pub fn start_logging_requests(dir: &Path) -> Result<RegistryServer> {
        RegistryServer::start_with(dir, None, true)
    }

    fn start_with(
        dir: &Path,
        auth: Option<(&str, &str)>,
        access_log: bool,
    ) -> Result<RegistryServer> {
        let auth = auth.map(|(u, p)| (u.to_string(), p.to_string()));
        // The free port can be taken between the check and the bind: retry.
        let mut logs = String::new();
        for _ in 0..3 {
            match RegistryServer::try_start(dir, auth.clone(), access_log)? {
                Ok(server) => return Ok(server),
                Err(log) => logs.push_str(&log),
            }
        }
        bail!("docker-registry did not start; its log:\n{logs}")
    }

    /// Ok(Err(log)) when the registry exited or did not answer in time.
    fn try_start(
        dir: &Path,
        auth: Option<(String, String)>,
        access_log: bool,
    ) -> Result<std::result::Result<RegistryServer, String>> {
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            !access_log,
            storage.display()
        );
        if let Some((user, password)) = &auth {
            let sh = Shell::new()?;
            let entry = cmd!(sh, "htpasswd -Bbn {user} {password}")
                .quiet()
                .read()
                .context("running htpasswd (Debian package apache2-utils)")?;
            let file = dir.join("htpasswd");
            fs::write(&file, format!("{entry}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lane\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting docker-registry (Debian package docker-registry)")?;
        let mut server = RegistryServer {
            child,
            port,
            dir: dir.to_path_buf(),
            auth,
        };
        if server.wait_ready() {
            Ok(Ok(server))
        } else {
            // Dropping the server stops it before its log is read.
            drop(server);
            Ok(Err(fs::read_to_string(&log_path).unwrap_or_default()))
        }
    }

    /// Waits until `GET /v2/` answers 200 (or 401 with auth), up to 15 s;
    /// false if the registry exits first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some(200 | 401) = status_of_v2(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as `--registry` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// CPU seconds (user and system) the registry process has used so far
    /// (`/proc/PID/stat`), for the benchmarks' accounting.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&self.child.id().to_string(), false)
    }

    /// What the registry has written to its log so far.
    pub fn log(&self) -> Result<String> {
        let path = self.dir.join("registry.log");
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Where the registry keeps blobs and manifests.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// `(user, password)` when started with htpasswd auth.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET /v2/` on 127.0.0.1:`port`; None when nothing
/// answers there (yet).
fn status_of_v2(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
