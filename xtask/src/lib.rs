//! The release lane: library behind `cargo xtask`.
//!
//! The pure core ([`spec`], [`layer`], [`oci`]) takes values and returns
//! values; the adapters ([`workspace`], [`cache`], [`build`], [`repro`])
//! touch the file system, git and cargo. See ARCHITECTURE.md.

pub mod build;
pub mod cache;
pub mod debian;
pub mod layer;
pub mod oci;
pub mod repro;
pub mod spec;
pub mod workspace;
