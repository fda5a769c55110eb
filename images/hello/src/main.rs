//! The sample service the release lane packages.
//!
//! `hello serve [ADDR]` answers every HTTP request with a greeting;
//! `hello --version` prints the version; `hello --self-check` checks what the
//! service needs at start-up (its configuration file, a writable temp dir is
//! NOT assumed: the smoke container has a read-only root) and exits 0 when all
//! is well; `hello --connect HOST:PORT` tries one TCP connection (used to show
//! that a smoke container has no network).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const CONFIG_PATH: &str = "/etc/hello/hello.conf";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("hello {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--self-check") => self_check(),
        Some("--connect") => connect(args.get(1).map(String::as_str).unwrap_or("")),
        Some("serve") => serve(args.get(1).map(String::as_str).unwrap_or("0.0.0.0:8080")),
        Some("--help") | None => {
            println!("usage: hello --version | --self-check | --connect HOST:PORT | serve [ADDR]");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("hello: unknown argument {other:?} (try --help)");
            ExitCode::from(2)
        }
    }
}

fn greeting() -> String {
    match std::fs::read_to_string(CONFIG_PATH) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("greeting="))
            .unwrap_or("hello")
            .trim()
            .to_string(),
        Err(_) => "hello".to_string(),
    }
}

fn self_check() -> ExitCode {
    match std::fs::read_to_string(CONFIG_PATH) {
        Ok(text) if text.lines().any(|l| l.starts_with("greeting=")) => {
            println!(
                "self-check ok: {} {}",
                greeting(),
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("self-check failed: {CONFIG_PATH} has no greeting= line");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("self-check failed: cannot read {CONFIG_PATH}: {e}");
            ExitCode::from(1)
        }
    }
}

fn connect(addr: &str) -> ExitCode {
    let target = match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            eprintln!("connect failed: cannot resolve {addr:?}");
            return ExitCode::from(1);
        }
    };
    match TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
        Ok(_) => {
            println!("connected to {target}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("connect failed: {target}: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(addr: &str) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let body = format!("{}\n", greeting());
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{}",
            body.len(),
            body
        );
        let _ = stream.write_all(response.as_bytes());
    }
    ExitCode::SUCCESS
}
