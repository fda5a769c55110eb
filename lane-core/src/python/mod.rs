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
//!   the provider of each module;
//! - [`smoke`]: the smoke-import script and its evidence.

pub mod imports;
pub mod lock;
pub mod requirements;
pub mod resolve;
pub mod smoke;
pub mod version;
pub mod wheel;

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
