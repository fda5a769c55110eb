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

    /// The README's test command is the one a fresh machine needs: it is
    /// `bash .ci/run`, which installs what is missing (ci/setup.sh) before
    /// it runs the tests, and CI runs exactly it.
    #[test]
    fn the_readme_test_command_installs_before_it_tests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).expect(rel);
        let readme = read("README.md");
        let block = readme
            .split("```sh\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("README.md starts with a sh block of commands");
        let tests: Vec<&str> = block
            .lines()
            .filter(|l| l.contains("# the tests"))
            .collect();
        assert_eq!(tests.len(), 1, "one test command in README.md: {block}");
        let command = tests[0].split('#').next().unwrap().trim();
        assert_eq!(command, "bash .ci/run", "README.md's test command");
        let run = read(".ci/run");
        let lines: Vec<&str> = run
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!(".ci/run does not run {prefix}: {lines:?}"))
        };
        assert!(
            at("bash ci/setup.sh") < at("cargo nextest run --workspace --no-fail-fast"),
            ".ci/run installs before it tests: {lines:?}"
        );
        let workflow = read(".github/workflows/release.yml");
        assert!(workflow.contains("run: bash .ci/run"), "CI runs .ci/run");
    }
}
