//! The release lane: library behind `cargo xtask`.
//!
//! The pure core ([`spec`], [`layer`], [`oci`]) takes values and returns
//! values; the adapters ([`workspace`], [`cache`], [`build`], [`repro`],
//! [`publish`], [`registry`]) touch the file system, git, cargo and the
//! registry; [`registry`] is the only async code. See ARCHITECTURE.md.

pub mod audit;
pub mod bench;
pub mod build;
pub mod cache;
pub mod evidence;
pub mod gates;
pub mod layer;
pub mod local_store;
pub mod oci;
pub mod promote;
pub mod provenance;
pub mod publish;
pub mod registry;
pub mod release;
pub mod repro;
pub mod signing;
pub mod spec;
pub mod verify;
pub mod workspace;
