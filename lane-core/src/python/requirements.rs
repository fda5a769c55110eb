//! PEP 508 dependency specifiers (`Requires-Dist`, image.toml requirements)
//! and their environment markers, evaluated for the image's Python and
//! platform (never the build machine's).

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Result, bail};

use super::normalize;
use super::version::{Specifier, Version, parse_specifiers, satisfies};

/// `name[extra1,extra2] (>=1, <2) ; marker`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// As written.
    pub name: String,
    pub extras: Vec<String>,
    pub specifiers: Vec<Specifier>,
    /// A direct reference (`name @ URL`): refused by the lane.
    pub url: Option<String>,
    pub marker: Option<Marker>,
    pub text: String,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Requirement {
    pub fn parse(text: &str) -> Result<Requirement> {
        let orig = text.trim();
        let (spec, marker) = match split_marker(orig) {
            Some((a, m)) => (
                a.trim(),
                Some(
                    Marker::parse(m.trim())
                        .map_err(|e| anyhow::anyhow!("requirement {orig:?}: marker: {e:#}"))?,
                ),
            ),
            None => (orig, None),
        };
        let n = spec
            .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
            .unwrap_or(spec.len());
        let name = &spec[..n];
        if name.is_empty()
            || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
        {
            bail!("requirement {orig:?} does not start with a valid distribution name (PEP 508)");
        }
        let mut rest = spec[n..].trim_start();
        let mut extras = Vec::new();
        if let Some(r) = rest.strip_prefix('[') {
            let Some((inside, after)) = r.split_once(']') else {
                bail!("requirement {orig:?}: unclosed '[' of extras");
            };
            extras = inside
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(normalize)
                .collect();
            rest = after.trim_start();
        }
        let mut url = None;
        let mut specifiers = Vec::new();
        if let Some(u) = rest.strip_prefix('@') {
            url = Some(u.trim().to_string());
        } else {
            let r = rest.trim();
            let r = r
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(r);
            specifiers =
                parse_specifiers(r).map_err(|e| anyhow::anyhow!("requirement {orig:?}: {e:#}"))?;
        }
        Ok(Requirement {
            name: name.to_string(),
            extras,
            specifiers,
            url,
            marker,
            text: orig.to_string(),
        })
    }

    /// PEP 503 normalised name.
    pub fn key(&self) -> String {
        normalize(&self.name)
    }

    /// Whether this requirement applies in `env` with `extras` requested.
    pub fn applies(&self, env: &MarkerEnv, extras: &BTreeSet<String>) -> bool {
        self.marker.as_ref().is_none_or(|m| m.eval(env, extras))
    }

    pub fn allows(&self, version: &Version) -> bool {
        satisfies(version, &self.specifiers)
    }

    /// The exact version of a `NAME==VERSION` pin.
    pub fn pinned_version(&self) -> Option<&str> {
        match self.specifiers.as_slice() {
            [s] if s.op == "==" && !s.version.ends_with(".*") => Some(&s.version),
            _ => None,
        }
    }
}

/// The `;` that starts the marker (not one inside a URL fragment).
fn split_marker(s: &str) -> Option<(&str, &str)> {
    if let Some(at) = s.find('@') {
        // In a URL requirement the marker follows "; " after whitespace.
        let after = &s[at..];
        let i = after.find(" ;").or_else(|| after.find("; "))?;
        let (a, m) = after.split_at(i);
        return Some((&s[..at + a.len()], m.trim_start().trim_start_matches(';')));
    }
    s.split_once(';')
}

/// The marker environment of the image's interpreter (PEP 508).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MarkerEnv {
    pub python_version: String,
    pub python_full_version: String,
    pub implementation_name: String,
    pub implementation_version: String,
    pub platform_python_implementation: String,
    pub os_name: String,
    pub sys_platform: String,
    pub platform_system: String,
    pub platform_machine: String,
    pub platform_release: String,
    pub platform_version: String,
}

impl MarkerEnv {
    /// CPython `full_version` (`3.11.2`) on Linux for `machine` (`x86_64`).
    pub fn cpython_linux(full_version: &str, machine: &str) -> MarkerEnv {
        let short: Vec<&str> = full_version.split('.').take(2).collect();
        MarkerEnv {
            python_version: short.join("."),
            python_full_version: full_version.to_string(),
            implementation_name: "cpython".into(),
            implementation_version: full_version.to_string(),
            platform_python_implementation: "CPython".into(),
            os_name: "posix".into(),
            sys_platform: "linux".into(),
            platform_system: "Linux".into(),
            platform_machine: machine.to_string(),
            platform_release: String::new(),
            platform_version: String::new(),
        }
    }

    fn get(&self, var: &str) -> Option<&str> {
        Some(match var {
            "python_version" => &self.python_version,
            "python_full_version" => &self.python_full_version,
            "implementation_name" => &self.implementation_name,
            "implementation_version" => &self.implementation_version,
            "platform_python_implementation" | "python_implementation" => {
                &self.platform_python_implementation
            }
            "os_name" | "os.name" => &self.os_name,
            "sys_platform" | "sys.platform" => &self.sys_platform,
            "platform_system" => &self.platform_system,
            "platform_machine" | "platform.machine" => &self.platform_machine,
            "platform_release" => &self.platform_release,
            "platform_version" => &self.platform_version,
            _ => return None,
        })
    }
}

/// A parsed marker expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    And(Box<Marker>, Box<Marker>),
    Or(Box<Marker>, Box<Marker>),
    Compare {
        left: Value,
        op: String,
        right: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Var(String),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    Str(String),
    Word(String),
    Op(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '\'' | '"' => {
                let Some(end) = s[i + 1..].find(c) else {
                    bail!("unterminated string in marker {s:?}");
                };
                out.push(Tok::Str(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            '=' | '!' | '<' | '>' | '~' => {
                let n = s[i..]
                    .find(|c: char| !"=!<>~".contains(c))
                    .unwrap_or(s.len() - i);
                out.push(Tok::Op(s[i..i + n].to_string()));
                i += n;
            }
            _ if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                let n = s[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(s.len() - i);
                out.push(Tok::Word(s[i..i + n].to_string()));
                i += n;
            }
            _ => bail!("unexpected {c:?} in marker {s:?}"),
        }
    }
    Ok(out)
}

struct P {
    toks: Vec<Tok>,
    i: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }
    fn or(&mut self) -> Result<Marker> {
        let mut m = self.and()?;
        while self.peek() == Some(&Tok::Word("or".into())) {
            self.i += 1;
            m = Marker::Or(Box::new(m), Box::new(self.and()?));
        }
        Ok(m)
    }
    fn and(&mut self) -> Result<Marker> {
        let mut m = self.atom()?;
        while self.peek() == Some(&Tok::Word("and".into())) {
            self.i += 1;
            m = Marker::And(Box::new(m), Box::new(self.atom()?));
        }
        Ok(m)
    }
    fn atom(&mut self) -> Result<Marker> {
        if self.peek() == Some(&Tok::Open) {
            self.i += 1;
            let m = self.or()?;
            if self.peek() != Some(&Tok::Close) {
                bail!("missing ')' in marker");
            }
            self.i += 1;
            return Ok(m);
        }
        let left = self.value()?;
        let op = match self.toks.get(self.i).cloned() {
            Some(Tok::Op(o)) => {
                self.i += 1;
                o
            }
            Some(Tok::Word(w)) if w == "in" => {
                self.i += 1;
                "in".to_string()
            }
            Some(Tok::Word(w)) if w == "not" => {
                self.i += 1;
                if self.toks.get(self.i) != Some(&Tok::Word("in".into())) {
                    bail!("expected 'in' after 'not' in marker");
                }
                self.i += 1;
                "not in".to_string()
            }
            t => bail!("expected a comparison operator in marker, found {t:?}"),
        };
        if ![
            "==", "!=", "<=", ">=", "<", ">", "~=", "===", "in", "not in",
        ]
        .contains(&op.as_str())
        {
            bail!("unknown marker operator {op:?}");
        }
        let right = self.value()?;
        Ok(Marker::Compare { left, op, right })
    }
    fn value(&mut self) -> Result<Value> {
        match self.toks.get(self.i).cloned() {
            Some(Tok::Str(s)) => {
                self.i += 1;
                Ok(Value::Str(s))
            }
            Some(Tok::Word(w)) => {
                self.i += 1;
                let known =
                    MarkerEnv::cpython_linux("3.0.0", "x").get(&w).is_some() || w == "extra";
                if !known {
                    bail!("unknown marker variable {w:?}");
                }
                Ok(Value::Var(w))
            }
            t => bail!("expected a marker variable or a quoted string, found {t:?}"),
        }
    }
}

/// Most tokens (variables, strings, operators, `and`/`or`, parentheses) a
/// PEP 508 marker may have: real markers have a few dozen. Keeps the marker
/// tree shallow enough for the recursive `eval` and drop.
pub const MAX_MARKER_TOKENS: usize = 512;

/// Deepest nesting of parentheses in a marker (the parser recurses on each).
pub const MAX_MARKER_DEPTH: usize = 32;

const VERSION_VARS: &[&str] = &[
    "python_version",
    "python_full_version",
    "implementation_version",
];

impl Marker {
    pub fn parse(text: &str) -> Result<Marker> {
        let toks = tokenize(text)?;
        // Evaluating and dropping a marker recurses over its tree: a hostile
        // METADATA must not get to make that tree deep (docs/fault-matrix-parsers.md).
        let mut depth = 0usize;
        for t in &toks {
            match t {
                Tok::Open => depth += 1,
                Tok::Close => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_MARKER_DEPTH {
                bail!("marker is nested more than {MAX_MARKER_DEPTH} parentheses deep");
            }
        }
        if toks.len() > MAX_MARKER_TOKENS {
            bail!(
                "marker has {} tokens, more than the {MAX_MARKER_TOKENS} (about {} terms) the lane reads",
                toks.len(),
                MAX_MARKER_TOKENS / 4
            );
        }
        let mut p = P { toks, i: 0 };
        let m = p.or()?;
        if p.i != p.toks.len() {
            bail!("unexpected {:?} in marker {text:?}", p.toks[p.i]);
        }
        Ok(m)
    }

    pub fn eval(&self, env: &MarkerEnv, extras: &BTreeSet<String>) -> bool {
        match self {
            Marker::And(a, b) => a.eval(env, extras) && b.eval(env, extras),
            Marker::Or(a, b) => a.eval(env, extras) || b.eval(env, extras),
            Marker::Compare { left, op, right } => {
                // `extra == "name"` holds when that extra was requested.
                let is_extra = |v: &Value| matches!(v, Value::Var(n) if n == "extra");
                if is_extra(left) || is_extra(right) {
                    let other = if is_extra(left) { right } else { left };
                    let Value::Str(e) = other else { return false };
                    let has = extras.contains(&normalize(e));
                    return match op.as_str() {
                        "==" => has,
                        "!=" => !has,
                        _ => false,
                    };
                }
                let resolve = |v: &Value| -> String {
                    match v {
                        Value::Str(s) => s.clone(),
                        Value::Var(n) => env.get(n).unwrap_or_default().to_string(),
                    }
                };
                let (l, r) = (resolve(left), resolve(right));
                let version_var = [left, right]
                    .iter()
                    .any(|v| matches!(v, Value::Var(n) if VERSION_VARS.contains(&n.as_str())));
                match op.as_str() {
                    "in" => r.contains(&l),
                    "not in" => !r.contains(&l),
                    _ if version_var => {
                        match (Version::parse(&l), Specifier::parse(&format!("{op}{r}"))) {
                            (Ok(v), Ok(s)) => s.contains(&v),
                            _ => string_cmp(&l, op, &r),
                        }
                    }
                    _ => string_cmp(&l, op, &r),
                }
            }
        }
    }
}

fn string_cmp(l: &str, op: &str, r: &str) -> bool {
    match op {
        "==" | "===" => l == r,
        "!=" => l != r,
        "<" => l < r,
        "<=" => l <= r,
        ">" => l > r,
        ">=" => l >= r,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> MarkerEnv {
        MarkerEnv::cpython_linux("3.11.2", "x86_64")
    }

    #[test]
    fn requirements_parse() {
        let r = Requirement::parse("six >=1.5").unwrap();
        assert_eq!((r.key().as_str(), r.specifiers.len()), ("six", 1));
        let r = Requirement::parse("Python_Dateutil==2.9.0.post0").unwrap();
        assert_eq!(r.key(), "python-dateutil");
        assert_eq!(r.pinned_version(), Some("2.9.0.post0"));
        let r = Requirement::parse(
            "requests[socks, security] (>=2.8.1, ==2.8.*) ; python_version < \"2.7\"",
        )
        .unwrap();
        assert_eq!(r.extras, ["socks", "security"]);
        assert_eq!(r.specifiers.len(), 2);
        assert!(!r.applies(&env(), &BTreeSet::new()));
        let r = Requirement::parse("pip @ https://example.invalid/pip.whl ; os_name == 'posix'")
            .unwrap();
        assert!(r.url.is_some() && r.marker.is_some());
        assert!(Requirement::parse(">=1").is_err());
        assert!(Requirement::parse("x ; foo == '1'").is_err());
    }

    #[test]
    fn markers_evaluate_for_the_image() {
        let none = BTreeSet::new();
        let yes = [
            "python_version >= '3.8'",
            "python_full_version == '3.11.2'",
            "sys_platform == 'linux' and platform_machine == 'x86_64'",
            "python_version < '3' or os_name == 'posix'",
            "'linux' in sys_platform",
            "implementation_name == \"cpython\"",
            "(python_version < '3.12') and platform_system != 'Windows'",
        ];
        for m in yes {
            assert!(Marker::parse(m).unwrap().eval(&env(), &none), "{m}");
        }
        let no = [
            "python_version < '3.10'",
            "sys_platform == 'win32'",
            "platform_python_implementation == 'PyPy'",
            "python_version >= '3.12'",
            "extra == 'test'",
        ];
        for m in no {
            assert!(!Marker::parse(m).unwrap().eval(&env(), &none), "{m}");
        }
        let test: BTreeSet<String> = ["test".to_string()].into();
        assert!(
            Marker::parse("extra == 'Test'")
                .unwrap()
                .eval(&env(), &test)
        );
    }
}

/// Hostile requirements and markers (docs/fault-matrix-parsers.md): `Requires-Dist` lines
/// come from a wheel's METADATA, so from whoever built the wheel.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated_text};
    use proptest::prelude::*;

    const SAMPLES: &[&str] = &[
        "requests[socks, security] (>=2.8.1, ==2.8.*) ; python_version < \"2.7\"",
        "pytest ; extra == 'test' and (os_name == \"nt\" or platform_machine != 'x86_64')",
        "name @ https://example.com/x.whl ; sys_platform not in 'win32 cygwin'",
        "six >=1.5",
    ];

    fn check(text: &str) {
        if let Ok(r) = Requirement::parse(text) {
            let env = MarkerEnv::cpython_linux("3.11.2", "x86_64");
            let _ = r.applies(&env, &BTreeSet::from(["test".to_string()]));
            let _ = r.pinned_version();
            let _ = r.key();
        }
        let _ = Marker::parse(text);
    }

    // Regressions: a marker nested or chained deeply enough overflowed the
    // stack (parse, eval, drop) and aborted the process.
    #[test]
    fn a_deeply_nested_marker_is_refused() {
        let text = format!(
            "{}os_name == 'a'{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        let e = Marker::parse(&text).unwrap_err().to_string();
        assert!(e.contains("nested"), "{e}");
    }

    #[test]
    fn a_marker_with_too_many_terms_is_refused() {
        let text = vec!["os_name == 'a'"; 100_000].join(" and ");
        let e = Requirement::parse(&format!("x ; {text}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("terms"), "{e}");
    }

    proptest! {
        #![proptest_config(hostile::config(512))]
        #[test]
        fn requirements_arbitrary_text(text in any::<String>()) {
            check(&text);
        }

        #[test]
        fn requirements_from_the_grammar(
            text in "[a-z(]{0,3}[ ()a-z_.'\"=!<>~,;@\\[\\]0-9*-]{0,60}"
        ) {
            check(&text);
        }

        #[test]
        fn requirements_mutated(text in prop::sample::select(SAMPLES).prop_flat_map(mutated_text)) {
            check(&text);
        }
    }
}
