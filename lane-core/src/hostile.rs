//! Hostile inputs for the property tests of every parser (docs/fault-matrix-parsers.md):
//! arbitrary bytes, and mutations of a valid sample (byte flips,
//! truncation, insertion, deletion, duplication of a range; for text also
//! whole lines: duplicated, dropped, swapped). Each property test states its
//! own case count through [`config`]; failures are not persisted to files:
//! a failing input found here is kept as a plain `#[test]` next to the
//! parser instead (see docs/fault-matrix-parsers.md).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// A bounded run: `cases` cases, no failure-persistence files, shrinking
/// capped so a failure is reported in seconds.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Keep the first bytes only.
    Truncate(Index),
    /// Insert bytes at a position.
    Insert(Index, Vec<u8>),
    /// Remove a range.
    Delete(Index, Index),
    /// Copy a range and insert the copy at another position.
    Duplicate(Index, Index, Index),
    /// Overwrite a byte with an interesting value.
    Set(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Delete(a, b)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Duplicate(a, b, c)),
        2 => (
            any::<Index>(),
            prop::sample::select(vec![0u8, 0x7f, 0x80, 0xff, b'\n', b'"', b'/', b'.', b'[', b'=']),
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
    ]
}

fn range(len: usize, a: &Index, b: &Index) -> (usize, usize) {
    let (a, b) = (a.index(len + 1), b.index(len + 1));
    (a.min(b), a.max(b))
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = bytes.len();
    match m {
        Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
        Mutation::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete(a, b) => {
            let (a, b) = range(len, a, b);
            bytes.drain(a..b);
        }
        Mutation::Duplicate(a, b, c) => {
            let (a, b) = range(len, a, b);
            let copy = bytes[a..b].to_vec();
            let at = c.index(len + 1);
            bytes.splice(at..at, copy);
        }
        _ => {}
    }
    bytes
}

/// One to four byte-level mutations of `valid`.
pub fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 1..5).prop_map(move |ms| ms.iter().fold(valid.clone(), apply))
}

#[derive(Debug, Clone)]
enum LineMutation {
    Duplicate(Index, Index, Index),
    Drop(Index),
    Swap(Index, Index),
    Insert(Index, String),
}

fn line_mutation() -> impl Strategy<Value = LineMutation> {
    prop_oneof![
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| LineMutation::Duplicate(a, b, c)),
        any::<Index>().prop_map(LineMutation::Drop),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| LineMutation::Swap(a, b)),
        (any::<Index>(), any::<String>()).prop_map(|(a, s)| LineMutation::Insert(a, s)),
    ]
}

fn apply_lines(mut lines: Vec<String>, m: &LineMutation) -> Vec<String> {
    let len = lines.len();
    match m {
        LineMutation::Duplicate(a, b, c) => {
            // A section (a range of lines) copied elsewhere: duplicate
            // tables, stanzas, keys.
            let (a, b) = range(len, a, b);
            let copy = lines[a..b].to_vec();
            let at = c.index(len + 1);
            lines.splice(at..at, copy);
        }
        LineMutation::Drop(i) if len > 0 => {
            lines.remove(i.index(len));
        }
        LineMutation::Swap(a, b) if len > 0 => lines.swap(a.index(len), b.index(len)),
        LineMutation::Insert(i, s) => lines.insert(i.index(len + 1), s.clone()),
        _ => {}
    }
    lines
}

/// Mutations of a valid text: byte-level (read back lossily as UTF-8) or
/// line-level (sections duplicated, lines dropped, swapped, inserted).
pub fn mutated_text(valid: &str) -> impl Strategy<Value = String> {
    let lines: Vec<String> = valid.lines().map(str::to_string).collect();
    prop_oneof![
        mutated(valid.as_bytes().to_vec()).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        prop::collection::vec(line_mutation(), 1..5).prop_map(move |ms| {
            let mut out = ms.iter().fold(lines.clone(), apply_lines).join("\n");
            out.push('\n');
            out
        }),
    ]
}

/// Arbitrary bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// An error a person can act on: not empty, and naming `names` (the file
/// or archive the parser was given) when it is not empty.
pub fn clear_error(e: &anyhow::Error, names: &str) -> Result<(), TestCaseError> {
    let message = format!("{e:#}");
    prop_assert!(!message.trim().is_empty(), "empty error message");
    if !names.is_empty() {
        prop_assert!(
            message.contains(names),
            "the error does not name {names:?}: {message}"
        );
    }
    Ok(())
}
