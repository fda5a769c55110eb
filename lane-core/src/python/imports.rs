//! The imports of the application's Python sources, read with Ruff's
//! parser (`ruff_python_parser`, the parser of Ruff and deptry): no regular
//! expressions, the real grammar, targeting the image's Python version so
//! syntax that interpreter cannot run is an error too.
//!
//! Collected, each with file:line: `import x.y`, `from x import y`
//! (`y` may be a submodule or a name), relative imports (resolved against
//! the file's package), `importlib.import_module("lit")` and
//! `__import__("lit")`. Classified: imports inside `try:` bodies whose
//! handlers catch `ImportError` (optional), under `if TYPE_CHECKING:`
//! (type checking only) and dynamic imports whose name is not a literal.

use std::fmt;

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{self as ast, Expr, PythonVersion, Stmt};
use ruff_python_parser::{Mode, ParseOptions};
use ruff_text_size::Ranged;
use serde::{Deserialize, Serialize};

/// How an import is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportKind {
    /// An ordinary import statement: it must resolve.
    Import,
    /// Inside `try:` with an `except ImportError` (or broader) handler.
    Optional,
    /// Under `if TYPE_CHECKING:`: never executed at run time.
    TypeChecking,
    /// `importlib.import_module("lit")` / `__import__("lit")`: must resolve.
    Dynamic,
    /// A dynamic import whose name is computed: not statically checkable.
    DynamicNonLiteral,
}

/// One import of one source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSite {
    /// The file, as the report names it (workspace path of the source).
    pub file: String,
    pub line: u32,
    /// The absolute dotted module that must exist (`yaml`, `pyhello.greet`);
    /// empty for a non-literal dynamic import.
    pub module: String,
    /// `from M import a, b`: the names, each a submodule or an attribute of M.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub kind: ImportKind,
    /// The statement or call as written (one line).
    pub code: String,
    /// Why the import cannot be resolved at all (a relative import beyond
    /// the top-level package).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl ImportSite {
    pub fn top_level(&self) -> &str {
        self.module.split('.').next().unwrap_or("")
    }
}

/// A source file that does not parse as the image's Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: Python syntax error: {}; fix the source (the image runs Python 3.11)",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for SourceError {}

/// Line starts of a text, for byte offset -> line:column.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        let mut v = vec![0];
        v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(v)
    }
    fn at(&self, offset: usize) -> (u32, u32) {
        let i = self.0.partition_point(|&s| s <= offset).saturating_sub(1);
        ((i + 1) as u32, (offset - self.0[i] + 1) as u32)
    }
}

/// The dotted module name of a source file relative to its sys.path entry
/// (`pyhello/greet.py` -> `pyhello.greet`, `pyhello/__init__.py` ->
/// `pyhello`, a package), or `None` for a file that is not importable.
pub fn module_of(rel_path: &str) -> Option<(String, bool)> {
    let stem = rel_path.strip_suffix(".py")?;
    let mut parts: Vec<&str> = stem.split('/').collect();
    let is_package = parts.last() == Some(&"__init__");
    if is_package {
        parts.pop();
    }
    if parts.is_empty() || !parts.iter().all(|p| super::wheel::is_identifier(p)) {
        return None;
    }
    Some((parts.join("."), is_package))
}

/// Parses one file and returns its imports. `module` is the file's dotted
/// name (for relative imports); `file` names it in the report and errors.
pub fn collect(
    file: &str,
    module: &str,
    is_package: bool,
    source: &str,
) -> Result<Vec<ImportSite>, SourceError> {
    let lines = Lines::new(source);
    let options = ParseOptions::from(Mode::Module).with_target_version(PythonVersion::PY311);
    let parsed = ruff_python_parser::parse_unchecked(source, options);
    // Ruff's parser grows its stack as it recurses; walking and dropping the
    // tree recurse too, so a hostile file nested deeper than any real one
    // is refused here, and its tree is never dropped recursively.
    let mut depth = Depth::default();
    match parsed.syntax() {
        ast::Mod::Module(m) => depth.visit_body(&m.body),
        ast::Mod::Expression(e) => depth.visit_expr(&e.body),
    }
    if depth.max > MAX_NESTING {
        std::mem::forget(parsed);
        return Err(SourceError {
            file: file.to_string(),
            line: 1,
            column: 1,
            message: format!(
                "nested more than {MAX_NESTING} levels deep (CPython's parser refuses such code too)"
            ),
        });
    }
    let result = collect_parsed(file, module, is_package, source, &lines, &parsed);
    stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, move || drop(parsed));
    result
}

/// Deepest nesting of statements, expressions and patterns read in one
/// source file. CPython 3.11's own parser gives up well before (its stack
/// holds 6000 rules, several per level), so no file the image could run is
/// refused.
pub const MAX_NESTING: u32 = 6000;

/// Below this much free stack, a recursive walk continues on a new segment
/// of [`STACK_SEGMENT`] bytes (the `stacker` crate, which Ruff's parser uses).
const STACK_RED_ZONE: usize = 256 << 10;
const STACK_SEGMENT: usize = 8 << 20;

/// How deep a syntax tree nests (counted up to [`MAX_NESTING`] + 1).
#[derive(Default)]
struct Depth {
    depth: u32,
    max: u32,
}

impl Depth {
    fn enter(&mut self, walk: impl FnOnce(&mut Self)) {
        self.depth += 1;
        self.max = self.max.max(self.depth);
        if self.depth <= MAX_NESTING {
            stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || walk(self));
        }
        self.depth -= 1;
    }
}

impl<'a> Visitor<'a> for Depth {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        self.enter(|v| visitor::walk_stmt(v, stmt));
    }
    fn visit_expr(&mut self, expr: &'a Expr) {
        self.enter(|v| visitor::walk_expr(v, expr));
    }
    fn visit_pattern(&mut self, pattern: &'a ast::Pattern) {
        self.enter(|v| visitor::walk_pattern(v, pattern));
    }
}

fn collect_parsed(
    file: &str,
    module: &str,
    is_package: bool,
    source: &str,
    lines: &Lines,
    parsed: &ruff_python_parser::Parsed<ast::Mod>,
) -> Result<Vec<ImportSite>, SourceError> {
    let error = |offset: usize, message: String| {
        let (line, column) = lines.at(offset);
        SourceError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    };
    if let Some(e) = parsed.errors().first() {
        return Err(error(e.location.start().to_usize(), e.error.to_string()));
    }
    if let Some(e) = parsed.unsupported_syntax_errors().first() {
        return Err(error(e.range.start().to_usize(), e.to_string()));
    }
    let ast::Mod::Module(parsed) = parsed.syntax() else {
        return Err(error(0, "not a module".into()));
    };
    let package = if is_package {
        module.to_string()
    } else {
        module
            .rsplit_once('.')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default()
    };
    let mut c = Collector {
        file,
        source,
        lines,
        package,
        optional: 0,
        type_checking: 0,
        out: Vec::new(),
    };
    c.visit_body(&parsed.body);
    Ok(c.out)
}

struct Collector<'s> {
    file: &'s str,
    source: &'s str,
    lines: &'s Lines,
    package: String,
    optional: u32,
    type_checking: u32,
    out: Vec<ImportSite>,
}

impl Collector<'_> {
    fn kind(&self, dynamic: bool) -> ImportKind {
        if self.type_checking > 0 {
            ImportKind::TypeChecking
        } else if self.optional > 0 {
            ImportKind::Optional
        } else if dynamic {
            ImportKind::Dynamic
        } else {
            ImportKind::Import
        }
    }

    fn code(&self, node: &impl Ranged) -> String {
        let r = node.range();
        let text = &self.source[r.start().to_usize()..r.end().to_usize()];
        let one: Vec<&str> = text.split_whitespace().collect();
        let mut s = one.join(" ");
        if s.len() > 160 {
            let mut cut = 157;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }

    fn push(
        &mut self,
        node: &impl Ranged,
        module: String,
        names: Vec<String>,
        kind: ImportKind,
        problem: Option<String>,
    ) {
        let (line, _) = self.lines.at(node.range().start().to_usize());
        self.out.push(ImportSite {
            file: self.file.to_string(),
            line,
            module,
            names,
            kind,
            code: self.code(node),
            problem,
        });
    }

    /// `from ..x import y` at `level` -> the absolute module, or why not.
    fn absolute(&self, level: u32, module: Option<&str>) -> Result<String, String> {
        if level == 0 {
            return Ok(module.unwrap_or_default().to_string());
        }
        let mut parts: Vec<&str> = if self.package.is_empty() {
            Vec::new()
        } else {
            self.package.split('.').collect()
        };
        if parts.is_empty() || (level as usize) > parts.len() {
            return Err(
                "a relative import beyond the top-level package (ImportError at run time)".into(),
            );
        }
        parts.truncate(parts.len() + 1 - level as usize);
        let mut base = parts.join(".");
        if let Some(m) = module {
            base.push('.');
            base.push_str(m);
        }
        Ok(base)
    }
}

fn catches_import_error(handlers: &[ast::ExceptHandler]) -> bool {
    fn names(e: &Expr) -> bool {
        match e {
            Expr::Name(n) => matches!(
                n.id.as_str(),
                "ImportError" | "ModuleNotFoundError" | "Exception" | "BaseException"
            ),
            Expr::Attribute(a) => matches!(a.attr.as_str(), "ImportError" | "ModuleNotFoundError"),
            Expr::Tuple(t) => t.elts.iter().any(names),
            _ => false,
        }
    }
    handlers.iter().any(|h| match h {
        ast::ExceptHandler::ExceptHandler(h) => h.type_.as_deref().is_none_or(names),
    })
}

fn is_type_checking(test: &Expr) -> bool {
    match test {
        Expr::Name(n) => n.id.as_str() == "TYPE_CHECKING",
        Expr::Attribute(a) => a.attr.as_str() == "TYPE_CHECKING",
        _ => false,
    }
}

impl<'a> Visitor<'a> for Collector<'_> {
    // The tree is at most MAX_NESTING deep (collect checked): each level
    // runs on enough stack.
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.stmt(stmt));
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.expr(expr));
    }

    fn visit_pattern(&mut self, pattern: &'a ast::Pattern) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            visitor::walk_pattern(self, pattern)
        });
    }
}

impl<'a> Collector<'_> {
    fn stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::Import(i) => {
                for alias in &i.names {
                    let kind = self.kind(false);
                    self.push(
                        stmt,
                        alias.name.as_str().to_string(),
                        Vec::new(),
                        kind,
                        None,
                    );
                }
            }
            Stmt::ImportFrom(f) => {
                let names: Vec<String> = f
                    .names
                    .iter()
                    .map(|a| a.name.as_str().to_string())
                    .filter(|n| n != "*")
                    .collect();
                let kind = self.kind(false);
                match self.absolute(f.level, f.module.as_ref().map(|m| m.as_str())) {
                    Ok(module) => self.push(stmt, module, names, kind, None),
                    Err(why) => self.push(stmt, String::new(), names, kind, Some(why)),
                }
            }
            Stmt::Try(t) => {
                let optional = catches_import_error(&t.handlers);
                if optional {
                    self.optional += 1;
                }
                self.visit_body(&t.body);
                if optional {
                    self.optional -= 1;
                }
                for h in &t.handlers {
                    self.visit_except_handler(h);
                }
                self.visit_body(&t.orelse);
                self.visit_body(&t.finalbody);
            }
            Stmt::If(i) if is_type_checking(&i.test) => {
                self.type_checking += 1;
                self.visit_body(&i.body);
                self.type_checking -= 1;
                for clause in &i.elif_else_clauses {
                    if let Some(t) = &clause.test {
                        self.visit_expr(t);
                    }
                    self.visit_body(&clause.body);
                }
            }
            _ => visitor::walk_stmt(self, stmt),
        }
    }

    fn expr(&mut self, expr: &'a Expr) {
        if let Expr::Call(call) = expr {
            let dynamic = match call.func.as_ref() {
                Expr::Name(n) => matches!(n.id.as_str(), "__import__" | "import_module"),
                Expr::Attribute(a) => {
                    a.attr.as_str() == "import_module"
                        && matches!(a.value.as_ref(), Expr::Name(n) if n.id.as_str() == "importlib")
                }
                _ => false,
            };
            if dynamic {
                let literal = match call.arguments.args.first() {
                    Some(Expr::StringLiteral(s)) => Some(s.value.to_str().to_string()),
                    _ => None,
                };
                let package = call.arguments.keywords.iter().find_map(|k| {
                    (k.arg.as_ref().map(|a| a.as_str()) == Some("package")).then_some(&k.value)
                });
                match literal {
                    Some(name) if !name.starts_with('.') => {
                        let kind = self.kind(true);
                        self.push(expr, name, Vec::new(), kind, None);
                    }
                    Some(name)
                        if package.is_some_and(
                            |p| matches!(p, Expr::Name(n) if n.id.as_str() == "__package__"),
                        ) =>
                    {
                        let level = name.bytes().take_while(|b| *b == b'.').count() as u32;
                        let rest = &name[level as usize..];
                        let kind = self.kind(true);
                        match self.absolute(level, (!rest.is_empty()).then_some(rest)) {
                            Ok(m) => self.push(expr, m, Vec::new(), kind, None),
                            Err(why) => self.push(expr, String::new(), Vec::new(), kind, Some(why)),
                        }
                    }
                    _ => {
                        let kind = if self.type_checking > 0 {
                            ImportKind::TypeChecking
                        } else {
                            ImportKind::DynamicNonLiteral
                        };
                        self.push(expr, String::new(), Vec::new(), kind, None);
                    }
                }
            }
        }
        visitor::walk_expr(self, expr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const SRC: &str = r#""""A module."""
import os, sys
import xml.etree.ElementTree as ET
from . import greet
from .config import load as load_config
from .. import nothing
from dateutil import parser
import importlib

try:
    import ujson as json
except ImportError:
    import json

from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from collections.abc import Iterator
else:
    import array

def plugin(name):
    importlib.import_module("yaml")
    __import__("six")
    return importlib.import_module(name)

def later():
    import secrets
"#;

    fn sites() -> Vec<ImportSite> {
        collect("app/pkg/mod.py", "pkg.mod", false, SRC).unwrap()
    }

    #[test]
    fn every_kind_of_import_is_collected_with_its_line() {
        let got: Vec<(u32, &str, ImportKind)> = Vec::new();
        let s = sites();
        let got: Vec<(u32, String, ImportKind)> = s
            .iter()
            .map(|i| (i.line, i.module.clone(), i.kind))
            .chain(got.into_iter().map(|(l, m, k)| (l, m.to_string(), k)))
            .collect();
        use ImportKind::*;
        let want: Vec<(u32, &str, ImportKind)> = vec![
            (2, "os", Import),
            (2, "sys", Import),
            (3, "xml.etree.ElementTree", Import),
            (4, "pkg", Import),
            (5, "pkg.config", Import),
            (6, "", Import),
            (7, "dateutil", Import),
            (8, "importlib", Import),
            (11, "ujson", Optional),
            (13, "json", Import),
            (15, "typing", Import),
            (17, "collections.abc", TypeChecking),
            (19, "array", Import),
            (22, "yaml", Dynamic),
            (23, "six", Dynamic),
            (24, "", DynamicNonLiteral),
            (27, "secrets", Import),
        ];
        let want: Vec<(u32, String, ImportKind)> = want
            .into_iter()
            .map(|(l, m, k)| (l, m.to_string(), k))
            .collect();
        assert_eq!(got, want);
        assert_eq!(s[3].names, ["greet"]);
        assert!(
            s[5].problem
                .as_deref()
                .unwrap()
                .contains("beyond the top-level package")
        );
        assert_eq!(s[15].code, "importlib.import_module(name)");
        assert_eq!(s[6].code, "from dateutil import parser");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = collect("app/x.py", "x", false, "import os\n\ndef f(:\n    pass\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("app/x.py", 3));
        assert!(e.to_string().starts_with("app/x.py:3:"), "{e}");
        // Python 3.12 syntax is refused for a 3.11 image.
        let e = collect("app/y.py", "y", false, "type Point = tuple[int, int]\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn module_names_of_files() {
        assert_eq!(module_of("pkg/__init__.py"), Some(("pkg".into(), true)));
        assert_eq!(module_of("pkg/sub/m.py"), Some(("pkg.sub.m".into(), false)));
        assert_eq!(module_of("my-script.py"), None);
        assert_eq!(module_of("README.md"), None);
    }
}

/// Hostile Python sources (docs/fault-matrix-parsers.md): the application's own files,
/// parsed with Ruff's parser. No panic; a syntax error names the file.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::hostile::{self, mutated_text};
    use proptest::prelude::*;

    const FILE: &str = "app/pkg/mod.py";

    fn check(source: &str) -> Result<(), TestCaseError> {
        if let Err(e) = collect(FILE, "pkg.mod", false, source) {
            prop_assert_eq!(&e.file, FILE);
            prop_assert!(!e.message.trim().is_empty());
        }
        Ok(())
    }

    // Regression guard: deep nesting must be an error or a result, not a
    // stack overflow.
    #[test]
    fn deeply_nested_sources_do_not_crash() {
        for open in [
            "(",
            "[",
            "{",
            "not ",
            "-",
            "lambda: ",
            "2**",
            "a if b else ",
        ] {
            let src = format!("x = {}1\n", open.repeat(20_000));
            let _ = collect(FILE, "pkg.mod", false, &src);
        }
        let src = format!("x = {}1\n", "not ".repeat(20_000));
        let e = collect(FILE, "pkg.mod", false, &src).unwrap_err();
        assert!(e.message.contains("nested more than 6000 levels"), "{e}");
        // Deep but not too deep: read, on a grown stack.
        let src = format!("x = {}1\nimport os\n", "-".repeat(5_000));
        assert_eq!(collect(FILE, "pkg.mod", false, &src).unwrap().len(), 1);
    }

    proptest! {
        #![proptest_config(hostile::config(256))]
        #[test]
        fn python_source_arbitrary_text(text in any::<String>()) {
            check(&text)?;
        }

        #[test]
        fn python_source_mutated(text in mutated_text(tests::SRC)) {
            check(&text)?;
        }

        #[test]
        fn module_names_arbitrary(path in any::<String>()) {
            let _ = module_of(&path);
        }
    }
}
