//! A real OCI registry on this machine: the Distribution registry from
//! Debian's `docker-registry` package (`docker-registry serve CONFIG`), on
//! 127.0.0.1 with a free port, its storage in a folder, with or without
//! htpasswd auth. `cargo xtask bench` publishes to it, and the tests'
//! harness starts it the same way: there is one launcher.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running registry, killed on drop.
pub struct RegistryServer {
    child: Child,
    pub port: u16,
    /// Config, storage, htpasswd file and log live here.
    pub dir: PathBuf,
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The HTTP status of `GET path` on 127.0.0.1:`port`, if anything answers.
fn status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl RegistryServer {
    /// Starts a registry whose files live under `dir` (emptied first); with
    /// `htpasswd = Some((user, password))`, only that user may use it.
    /// Retries on another port when the free one was taken meanwhile.
    pub fn start(dir: &Path, htpasswd: Option<(&str, &str)>) -> Result<RegistryServer> {
        let mut logs = String::new();
        for _ in 0..3 {
            match RegistryServer::try_start(dir, htpasswd)? {
                Ok(server) => return Ok(server),
                Err(log) => logs.push_str(&log),
            }
        }
        bail!("docker-registry did not start; its logs:\n{logs}")
    }

    fn try_start(
        dir: &Path,
        htpasswd: Option<(&str, &str)>,
    ) -> Result<std::result::Result<RegistryServer, String>> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        let storage = dir.join("storage");
        fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, password)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("running htpasswd (Debian package apache2-utils)")?;
            if !out.status.success() {
                bail!(
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let file = dir.join("htpasswd");
            fs::write(&file, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: release-lane\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config)?;
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let mut server = RegistryServer {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        // Ready when GET /v2/ answers (200, or 401 with auth), up to 15 s.
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.child.try_wait() {
                break;
            }
            if let Some(200 | 401) = status(port, "/v2/") {
                return Ok(Ok(server));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.child.kill();
        Ok(Err(fs::read_to_string(&log_path).unwrap_or_default()))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage folder.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
