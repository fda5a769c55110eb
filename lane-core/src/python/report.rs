//! The Python part of an image's drift report: what each import resolved
//! to and every failure with its fix. Plain records (no file system, no
//! image types), so the drift report can hold them without the resolver.

use serde::{Deserialize, Serialize};

use super::imports::ImportSite;

/// Who provides a module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Provider {
    /// `wheel`, `debian`, `application`, `stdlib`, `builtin`, `unowned`
    pub kind: String,
    pub name: String,
}

/// One import and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImport {
    #[serde(flatten)]
    pub site: ImportSite,
    /// `resolved`, `unresolved`, `not_checked` (non-literal dynamic)
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// For an unresolved import: the part of the dotted name not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// For an unresolved import: distributions that would provide it
    /// (`NAME==VERSION` from the lock's candidates, `deb:PACKAGE` from
    /// Debian's Contents index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
}

/// An installed distribution and what uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    pub name: String,
    pub version: Option<String>,
    /// `wheel` (a .dist-info the lane installed) or `debian`
    pub kind: String,
    pub modules: Vec<String>,
    pub requires_dist: Vec<String>,
    /// Files of the application importing it, or `requires-dist:NAME`.
    pub used_by: Vec<String>,
}

/// A `Requires-Dist` of an installed wheel that the image does not satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingRequirement {
    pub distribution: String,
    pub version: String,
    pub requirement: String,
    /// The required distribution's name.
    pub requires: String,
    /// `not installed` or `installed VERSION does not satisfy ...`
    pub reason: String,
}

/// An extension module whose shared libraries do not all load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionProblem {
    pub module: String,
    pub path: String,
    pub provider: Option<Provider>,
    pub library: String,
    pub reason: String,
    pub library_providers: Vec<String>,
}

/// The Python part of an image's drift report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonDrift {
    pub interpreter: String,
    pub python: String,
    pub sys_path: Vec<String>,
    pub files: Vec<String>,
    pub imports: Vec<ResolvedImport>,
    /// Failing: imports nothing in the image provides.
    pub unresolved: Vec<ResolvedImport>,
    /// Reported: optional, TYPE_CHECKING and non-literal dynamic imports.
    pub optional: Vec<ResolvedImport>,
    pub type_checking: Vec<ResolvedImport>,
    pub dynamic: Vec<ResolvedImport>,
    pub distributions: Vec<Distribution>,
    /// Failing: the `pip check` rule.
    pub missing_requirements: Vec<MissingRequirement>,
    /// Failing: extension modules whose libraries are missing (from the
    /// ELF analysis, tied to their Python module and package).
    pub extension_problems: Vec<ExtensionProblem>,
    /// Reported: curated distributions nothing imports.
    pub unused: Vec<String>,
    /// What the smoke test imports, one top-level module each.
    pub smoke_modules: Vec<String>,
    /// Debian packages that provide a module the application imports.
    pub used_packages: Vec<String>,
}

impl PythonDrift {
    pub fn ok(&self) -> bool {
        self.unresolved.is_empty()
            && self.missing_requirements.is_empty()
            && self.extension_problems.is_empty()
    }

    /// Adds suggestions (from Debian's Contents index) for the unresolved
    /// imports of top-level module `top`.
    pub fn add_providers(&mut self, top: &str, providers: &[String]) {
        for u in self.unresolved.iter_mut().chain(self.imports.iter_mut()) {
            if u.status == "unresolved" && u.site.top_level() == top {
                for p in providers {
                    if !u.providers.contains(p) {
                        u.providers.push(p.clone());
                    }
                }
            }
        }
    }

    /// One line per failure: what, where, how to fix.
    pub fn failures(&self, image: &str) -> Vec<String> {
        let mut out = Vec::new();
        for u in &self.unresolved {
            let fix = if u.providers.is_empty() {
                "no known distribution provides it: add the module to the application, or curate the distribution that provides it ([python] requirements, then cargo xtask lock)".to_string()
            } else {
                let (wheels, debs): (Vec<&String>, Vec<&String>) =
                    u.providers.iter().partition(|p| !p.starts_with("deb:"));
                let mut ways = Vec::new();
                if !wheels.is_empty() {
                    ways.push(format!(
                        "add {} to [python] requirements",
                        wheels
                            .iter()
                            .map(|w| format!("\"{w}\""))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ));
                }
                if !debs.is_empty() {
                    ways.push(format!(
                        "add Debian package {} to [debian] packages",
                        debs.iter()
                            .map(|d| d.trim_start_matches("deb:"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ));
                }
                format!(
                    "it is provided by distribution {}: {}, then run cargo xtask lock",
                    u.providers
                        .iter()
                        .map(|p| p.trim_start_matches("deb:"))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    ways.join(", or ")
                )
            };
            let what = match (&u.site.problem, &u.missing) {
                (Some(p), _) => p.clone(),
                (None, Some(m)) if m != &u.site.module => {
                    format!("module {} is not in the image (no {m})", u.site.module)
                }
                _ => format!("module {} is not in the image", u.site.module),
            };
            out.push(format!(
                "image {image}: {}:{}: `{}`: {what}; {fix}",
                u.site.file, u.site.line, u.site.code
            ));
        }
        for m in &self.missing_requirements {
            out.push(format!(
                "image {image}: distribution {} {} requires {} ({}), {}; add \"{}\" to [python] requirements (or fix the lock) and run cargo xtask lock",
                m.distribution, m.version, m.requires, m.requirement, m.reason, m.requires
            ));
        }
        for e in &self.extension_problems {
            let owner = e
                .provider
                .as_ref()
                .map(|p| format!(" of {} {}", p.kind, p.name))
                .unwrap_or_default();
            let fix = if e.library_providers.is_empty() {
                "no known package ships it".to_string()
            } else {
                format!(
                    "it is provided by package {}: add it to the image's [debian] packages (or remove it from exclude)",
                    e.library_providers.join(" or ")
                )
            };
            out.push(format!(
                "image {image}: Python extension module {} ({}{owner}) needs {}: {}; {fix}",
                e.module, e.path, e.library, e.reason
            ));
        }
        out
    }
}
