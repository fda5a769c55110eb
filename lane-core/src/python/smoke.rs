//! The smoke-import: the image's own interpreter imports every top-level
//! module the drift analysis found (the application's imports and the
//! curated distributions' modules, plus image.toml `modules`) with
//! `-X importtime`, in the same hardened container as the other smoke
//! commands. [`check`] builds the command; [`evidence`] reads its output.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::SmokeSpec;

/// The name of the smoke check that imports the modules.
pub const CHECK_NAME: &str = "python-imports";

const OK: &str = "lane-import ok ";
const FAILED: &str = "lane-import FAILED ";
const END: &str = "lane-import end ";
const MODULES: &str = "lane-import modules ";
const DONE: &str = "lane-import done";

/// The smoke command: `INTERPRETER -X importtime -c SCRIPT`.
pub fn check(interpreter: &str, modules: &[String]) -> SmokeSpec {
    let list = modules
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let lines = [
        "import importlib, sys, traceback".to_string(),
        "failed = 0".to_string(),
        format!("for name in [{list}]:"),
        "    try:".to_string(),
        "        importlib.import_module(name)".to_string(),
        format!("        print({OK:?} + name, flush=True)"),
        "    except BaseException:".to_string(),
        "        failed += 1".to_string(),
        format!("        print({FAILED:?} + name, flush=True)"),
        "        traceback.print_exc(file=sys.stdout)".to_string(),
        format!("        print({END:?} + name, flush=True)"),
        format!("print({MODULES:?} + ' '.join(sorted(sys.modules)), flush=True)"),
        format!("print({DONE:?}, flush=True)"),
        "sys.exit(1 if failed else 0)".to_string(),
    ];
    let script = lines.join("\n") + "\n";
    SmokeSpec {
        name: CHECK_NAME.to_string(),
        command: vec![
            interpreter.to_string(),
            "-X".into(),
            "importtime".into(),
            "-c".into(),
            script,
        ],
        expect_exit: 0,
        expect_output: None,
        timeout_secs: 120,
    }
}

/// The modules a smoke-import check asks for (read back from its script).
pub fn requested(spec: &SmokeSpec) -> Vec<String> {
    let script = spec.command.last().map(String::as_str).unwrap_or("");
    let Some(start) = script.find("for name in [") else {
        return Vec::new();
    };
    let rest = &script[start + "for name in [".len()..];
    let list = rest.split("]:").next().unwrap_or("");
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// What the smoke-import showed: the evidence of the gate statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportEvidence {
    /// The modules asked for, in order.
    pub requested: Vec<String>,
    pub imported_ok: Vec<String>,
    pub failed: Vec<FailedImport>,
    /// Every module in `sys.modules` at the end (what was really imported).
    pub modules_loaded: Vec<String>,
    /// Cumulative import time of each requested module (microseconds), from
    /// `-X importtime`.
    pub import_time_us: BTreeMap<String, u64>,
    /// The script printed its last line (it did not crash or time out).
    pub finished: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedImport {
    pub module: String,
    /// The exception line (`ModuleNotFoundError: No module named 'x'`).
    pub error: String,
    pub traceback: String,
}

/// Reads the container's output.
pub fn evidence(requested: &[String], output: &str) -> ImportEvidence {
    let mut ev = ImportEvidence {
        requested: requested.to_vec(),
        ..ImportEvidence::default()
    };
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("import time:") {
            let cols: Vec<&str> = rest.split('|').collect();
            if let [_, cum, name] = cols.as_slice() {
                let name = name.trim();
                if let Ok(us) = cum.trim().parse::<u64>()
                    && requested.iter().any(|r| r == name)
                {
                    ev.import_time_us.entry(name.to_string()).or_insert(us);
                }
            }
            continue;
        }
        if let Some(m) = line.strip_prefix(OK) {
            ev.imported_ok.push(m.trim().to_string());
        } else if let Some(m) = line.strip_prefix(FAILED) {
            current = Some((m.trim().to_string(), Vec::new()));
        } else if let Some(m) = line.strip_prefix(END) {
            if let Some((module, lines)) = current.take() {
                let error = lines
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.starts_with(' '))
                    .unwrap_or(&"")
                    .to_string();
                let _ = m;
                ev.failed.push(FailedImport {
                    module,
                    error,
                    traceback: lines.join("\n"),
                });
            }
        } else if let Some(m) = line.strip_prefix(MODULES) {
            ev.modules_loaded = m.split_whitespace().map(str::to_string).collect();
        } else if line.trim() == DONE {
            ev.finished = true;
        } else if let Some((_, lines)) = &mut current {
            lines.push(line);
        }
    }
    ev
}

impl ImportEvidence {
    /// One failure per module that did not import, with its traceback.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .failed
            .iter()
            .map(|f| {
                format!(
                    "import of module {} failed: {}\n{}",
                    f.module,
                    f.error,
                    f.traceback
                        .lines()
                        .map(|l| format!("        {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
            .collect();
        if !self.finished {
            out.push(format!(
                "the smoke-import did not finish ({} of {} modules imported); see the logs",
                self.imported_ok.len(),
                self.requested.len()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_python_and_its_output_is_evidence() {
        let mods = vec!["yaml".to_string(), "requests".to_string()];
        let c = check("/usr/bin/python3.11", &mods);
        assert_eq!(
            &c.command[..4],
            ["/usr/bin/python3.11", "-X", "importtime", "-c"]
        );
        assert!(
            c.command[4].contains("for name in [\"yaml\", \"requests\"]:"),
            "{}",
            c.command[4]
        );
        assert_eq!(requested(&c), mods);
        assert!(
            c.command[4].contains("\n    try:\n        importlib.import_module(name)\n"),
            "{}",
            c.command[4]
        );
        let out = "import time: self [us] | cumulative | imported package\n\
import time:       120 |       3400 | yaml\n\
lane-import ok yaml\n\
lane-import FAILED requests\n\
Traceback (most recent call last):\n\
  File \"<string>\", line 5, in <module>\n\
ModuleNotFoundError: No module named 'requests'\n\
lane-import end requests\n\
lane-import modules sys yaml yaml.error\n\
lane-import done\n";
        let ev = evidence(&mods, out);
        assert_eq!(ev.imported_ok, ["yaml"]);
        assert_eq!(ev.failed[0].module, "requests");
        assert_eq!(
            ev.failed[0].error,
            "ModuleNotFoundError: No module named 'requests'"
        );
        assert_eq!(ev.modules_loaded, ["sys", "yaml", "yaml.error"]);
        assert_eq!(ev.import_time_us["yaml"], 3400);
        assert!(ev.finished);
        let f = ev.failures();
        assert_eq!(f.len(), 1);
        assert!(
            f[0].starts_with("import of module requests failed: ModuleNotFoundError"),
            "{f:?}"
        );
        assert!(!evidence(&mods, "").failures().is_empty());
    }
}
