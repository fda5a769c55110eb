//! The release lane's world: adapters (file system, processes, registry,
//! Docker Engine) and commands, over the pure core in `lane-core`.
//! See ARCHITECTURE.md.

pub mod adapters;
pub mod commands;
pub mod report;

/// Repository checks as ordinary tests.
#[cfg(test)]
mod tidy {
    use std::path::Path;

    /// The crates that do I/O; `lane-core` may depend on none of them.
    const IO_CRATES: &[&str] = &[
        "tokio",
        "reqwest",
        "oci-client",
        "bollard",
        "xshell",
        "cargo_metadata",
        "walkdir",
        "indicatif",
    ];

    #[test]
    fn lane_core_depends_on_no_io_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "tree",
                "-p",
                "lane-core",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--offline",
            ])
            .output()
            .expect("running cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout).unwrap();
        assert!(
            tree.starts_with("lane-core "),
            "unexpected cargo tree output:\n{tree}"
        );
        let found: Vec<&str> = tree
            .lines()
            .filter_map(|l| l.split(' ').next())
            .filter(|name| IO_CRATES.contains(name))
            .collect();
        assert!(
            found.is_empty(),
            "lane-core depends on I/O crates {found:?}: move that code to xtask/src/adapters"
        );
    }
}
