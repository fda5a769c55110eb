//! Python runtime images: the rules, no I/O.
//!
//! - [`imports`]: the imports of the application's sources (Ruff's parser),
//!   with file:line and their kind (optional, TYPE_CHECKING, dynamic);
//! - [`requirements`] and [`version`]: PEP 508 requirements with markers
//!   evaluated for the image's Python and platform, PEP 440 versions;
//! - [`wheel`]: reading a verified wheel from bytes (refusing unsafe paths,
//!   symlinks and RECORD mismatches) and installing it deterministically;
//! - [`lock`]: `lockfiles/python.lock`, its resolution and diff;
//! - [`resolve`]: import drift, resolution inside the image file system and
//!   the provider of each module; [`report`] its records;
//! - [`smoke`]: the smoke-import script and its evidence.

pub mod imports;
pub mod lock;
pub mod report;
pub mod requirements;
pub mod resolve;
pub mod smoke;
pub mod version;
pub mod wheel;

/// A Python identifier (a module name's component): what `spec` checks
/// `[python] modules` with, and what wheels' top-level names must be.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// PEP 503 normalised distribution name (`Python_Dateutil` -> `python-dateutil`).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.trim().chars() {
        if c == '-' || c == '_' || c == '.' {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}
