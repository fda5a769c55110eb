//! The release lane's world: adapters (file system, processes, registry,
//! Docker Engine) and commands, over the pure core in `lane-core`.
//! See ARCHITECTURE.md.

pub mod adapters;
pub mod cli;
pub mod commands;
pub mod lane;
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

    /// Module `path` (`adapters::registry`, `release`) -> the modules of the
    /// same crate its non-test code names through `crate::`, for every
    /// module file in `src` and in every folder under it.
    fn module_graph(src: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut graph = std::collections::BTreeMap::new();
        let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
        let mut todo = vec![(String::new(), src.to_path_buf())];
        while let Some((group, dir)) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let name = if group.is_empty() {
                    stem.to_string()
                } else {
                    format!("{group}::{stem}")
                };
                if p.is_dir() {
                    todo.push((name, p));
                } else if p.extension().is_some_and(|x| x == "rs")
                    && !["mod", "lib", "main"].contains(&stem)
                {
                    files.push((name, p));
                }
            }
        }
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        for (name, path) in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let mut deps: Vec<String> = Vec::new();
            // In a folder, `super::x` is the folder's module `x`.
            let folder = name.rsplit_once("::").map(|(g, _)| g.to_string());
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let line = match &folder {
                    Some(g) => line.replace("super::", &format!("crate::{g}::")),
                    None => line.to_string(),
                };
                let line = &expand_groups(&line);
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    // The longest module name that the reference starts with.
                    if let Some(m) = names
                        .iter()
                        .filter(|m| {
                            rest.starts_with(m.as_str())
                                && !rest[m.len()..]
                                    .starts_with(|c: char| c.is_alphanumeric() || c == '_')
                        })
                        .max_by_key(|m| m.len())
                    {
                        if m != name && !deps.contains(m) {
                            deps.push(m.clone());
                        }
                    }
                }
            }
            graph.insert(name.clone(), deps);
        }
        graph
    }

    /// `crate::a::{b, c::d}` -> `crate::a::b crate::a::c::d` (one level).
    fn expand_groups(line: &str) -> String {
        let mut out = String::new();
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let path_end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let (path, after) = tail.split_at(path_end);
            match after.strip_prefix('{').and_then(|a| a.split_once('}')) {
                Some((inner, next)) => {
                    for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        out.push_str(&format!(" {path}{item} "));
                    }
                    rest = next;
                }
                None => {
                    out.push_str(path);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// A cycle in `graph`, if any, as the list of modules along it.
    fn find_cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            graph: &std::collections::BTreeMap<String, Vec<String>>,
            stack: &mut Vec<String>,
            done: &mut std::collections::BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = stack.iter().position(|s| s == n) {
                let mut cycle = stack[i..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            if !done.insert(n.to_string()) {
                return None;
            }
            stack.push(n.to_string());
            for d in graph.get(n).into_iter().flatten() {
                if let Some(c) = visit(d, graph, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            None
        }
        let mut done = std::collections::BTreeSet::new();
        graph
            .keys()
            .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
    }

    #[test]
    fn no_import_cycles_among_modules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let xtask = module_graph(&root.join("xtask/src"));
        assert!(
            xtask.contains_key("commands::release")
                && xtask.contains_key("lane::release")
                && xtask.contains_key("adapters::registry")
        );
        // Every folder of both crates (issue 26).
        let core = module_graph(&root.join("lane-core/src"));
        assert!(core.contains_key("python::resolve"));
        assert!(core.contains_key("provenance"));
        for graph in [&xtask, &core] {
            if let Some(c) = find_cycle(graph) {
                panic!("import cycle: {}", c.join(" -> "));
            }
        }
        // Layers (issue 26): adapters import neither the lane nor a
        // command; the lane imports no command; no command imports another.
        let layer = |m: &str| m.split("::").next().unwrap_or_default().to_string();
        let forbidden_arrow = |from: &str, to: &str| {
            matches!(
                (layer(from).as_str(), layer(to).as_str()),
                ("adapters", "lane" | "commands") | ("lane" | "commands", "commands")
            )
        };
        assert!(forbidden_arrow("commands::bench", "commands::release"));
        assert!(forbidden_arrow("lane::build", "commands::build"));
        assert!(forbidden_arrow("adapters::apt", "lane::build"));
        assert!(!forbidden_arrow("commands::bench", "lane::release"));
        assert!(!forbidden_arrow("commands::verify", "cli"));
        let mut arrows = 0;
        for (m, deps) in &xtask {
            let forbidden: Vec<&String> = deps.iter().filter(|d| forbidden_arrow(m, d)).collect();
            arrows += deps.len();
            assert!(
                forbidden.is_empty(),
                "{m} imports {forbidden:?}: commands share code through lane/ (engines) or cli.rs (flag groups), adapters through adapters/"
            );
        }
        assert!(arrows > 50, "the import graph was read: {arrows} arrows");
        assert_eq!(
            expand_groups("use crate::adapters::{layout, registry::X};"),
            "use  crate::adapters::layout  crate::adapters::registry::X ;"
        );
        // The cycle finder finds one.
        let mut g = xtask.clone();
        g.get_mut("adapters::registry")
            .unwrap()
            .push("commands::release".into());
        g.get_mut("commands::release")
            .unwrap()
            .push("adapters::registry".into());
        assert!(find_cycle(&g).is_some());
    }

    /// The lines of a Rust file that carry code, white space folded: blank
    /// lines, comments, `use` lines, module declarations and lone
    /// punctuation are left out.
    fn code_lines(text: &str) -> Vec<(usize, String)> {
        text.lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split_whitespace().collect::<Vec<_>>().join(" ")))
            .filter(|(_, l)| {
                !l.is_empty()
                    && !l.starts_with("//")
                    && !l.starts_with("use ")
                    && !((l.starts_with("pub mod ") || l.starts_with("mod ")) && l.ends_with(';'))
                    && !l.chars().all(|c| "{}()[];,.?".contains(c))
            })
            .collect()
    }

    /// Every run of `n` code lines that stands in more than one place:
    /// (the run's first line, the places as `file:line`).
    fn repeated_runs(files: &[(String, String)], n: usize) -> Vec<(String, Vec<String>)> {
        let mut places: std::collections::BTreeMap<Vec<String>, Vec<String>> =
            std::collections::BTreeMap::new();
        for (name, text) in files {
            let lines = code_lines(text);
            for w in lines.windows(n) {
                let key: Vec<String> = w.iter().map(|(_, l)| l.clone()).collect();
                places
                    .entry(key)
                    .or_default()
                    .push(format!("{name}:{}", w[0].0));
            }
        }
        places
            .into_iter()
            .filter(|(_, p)| p.len() > 1)
            .map(|(k, p)| (k[0].clone(), p))
            .collect()
    }

    /// Product code says each thing once: no run of six code lines stands
    /// in two places of `lane-core/src` or `xtask/src`.
    #[test]
    fn no_block_of_six_code_lines_is_repeated_in_product_code() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        let mut todo = vec![root.join("lane-core/src"), root.join("xtask/src")];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let name = p.strip_prefix(&root).unwrap().display().to_string();
                    files.push((name, std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        assert!(
            files.len() > 40,
            "the product code was found: {}",
            files.len()
        );
        let repeated = repeated_runs(&files, 6);
        assert!(
            repeated.is_empty(),
            "blocks of six code lines written twice (say them once):\n{}",
            repeated
                .iter()
                .map(|(first, at)| format!("  {} ({first})", at.join(" ~ ")))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The finder finds a repeated block, folded white space and all.
        let block =
            "let a = 1;\nlet b = 2;\n// note\nlet c = 3;\nlet d = 4;\n}\nlet e = 5;\nlet f = 6;\n";
        let twice = vec![
            ("a.rs".to_string(), format!("fn x() {{\n{block}}}\n")),
            (
                "b.rs".to_string(),
                format!("fn y() {{\n{}}}\n", block.replace(" = ", "  =  ")),
            ),
        ];
        let found = repeated_runs(&twice, 6);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, ["a.rs:2", "b.rs:2"]);
    }

    /// The CI example's build matrix names every image of the workspace.
    #[test]
    fn the_ci_build_matrix_names_every_image() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let workflow = std::fs::read_to_string(root.join(".github/workflows/release.yml")).unwrap();
        let line = workflow
            .lines()
            .find_map(|l| l.trim().strip_prefix("image: ["))
            .expect("release.yml has a build matrix `image: [...]`");
        let mut matrix: Vec<&str> = line
            .trim_end_matches(']')
            .split(',')
            .map(str::trim)
            .collect();
        matrix.sort();
        let mut images: Vec<String> = std::fs::read_dir(root.join("images"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("image.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        images.sort();
        assert_eq!(matrix, images, "release.yml's build matrix and images/");
    }

    /// Audit finding 4: no job a pull request runs holds push rights: every
    /// job of release.yml that has `id-token: write`, a secret or the cache
    /// runs only on a push.
    #[test]
    fn pull_requests_get_no_id_token_secret_or_cache() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let workflow = std::fs::read_to_string(root.join(".github/workflows/release.yml")).unwrap();
        let jobs = workflow.split("\njobs:\n").nth(1).expect("a jobs: section");
        let mut names = Vec::new();
        let mut current: Option<(String, String)> = None;
        let mut all = Vec::new();
        for line in jobs.lines() {
            let is_job = line.starts_with("  ")
                && !line.starts_with("   ")
                && line.trim_end().ends_with(':')
                && !line.trim().starts_with('#');
            if is_job {
                all.extend(current.take());
                current = Some((line.trim().trim_end_matches(':').to_string(), String::new()));
            } else if let Some((_, body)) = current.as_mut()
                && !line.trim().starts_with('#')
            {
                body.push_str(line);
                body.push('\n');
            }
        }
        all.extend(current);
        for (name, body) in &all {
            names.push(name.clone());
            let privileged = body.contains("id-token: write")
                || body.contains("secrets.")
                || body.contains("LANE_CACHE");
            if privileged {
                assert!(
                    body.contains("if: github.event_name == 'push'"),
                    "job {name} holds an id-token, a secret or the cache but may run on a pull request"
                );
            }
        }
        assert!(names.contains(&"release".to_string()), "{names:?}");
        assert!(names.contains(&"build".to_string()), "{names:?}");
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
