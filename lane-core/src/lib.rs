//! The release lane's pure core: every rule, no I/O.
//!
//! Values in, values out: image definitions, layer encoding, OCI documents,
//! gates and policy, provenance, evidence, signatures over bytes. The `xtask`
//! crate holds the world (file system, processes, network, clock) and calls
//! in here. `clippy.toml` forbids `std::fs`, `std::process`, `std::env` and
//! the clock in this crate; a tidy test keeps I/O crates out of its
//! dependency tree.

pub mod blockgz;
pub mod contents;
pub mod debian;
pub mod distribution;
pub mod drift;
pub mod evidence;
pub mod fuzz_targets;
pub mod gates;
#[cfg(test)]
mod hostile;
pub mod id;
pub mod identity;
pub mod layer;
pub mod lockfile;
pub mod oci;
pub mod provenance;
pub mod purl;
pub mod python;
pub mod reuse;
pub mod sbom;
pub mod secret_scan;
pub mod security_age;
pub mod signing;
pub mod smoke;
pub mod spec;
pub mod store;
pub mod strict_json;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;
