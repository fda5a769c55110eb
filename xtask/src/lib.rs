//! The release lane: library behind `cargo xtask`.
//!
//! The pure core ([`spec`], [`layer`], [`oci`], [`gates`], [`provenance`],
//! [`evidence`]) takes values and returns values; the adapters
//! ([`workspace`], [`cache`], [`build`], [`repro`], [`store`],
//! [`local_store`], [`registry`], [`engine`]) touch the file system, git,
//! cargo, the registry and the Docker Engine; [`registry`] and [`engine`]
//! are the only async code. See ARCHITECTURE.md.

pub mod audit;
pub mod base;
pub mod bench;
pub mod build;
pub mod cache;
pub mod debian;
pub mod drift;
pub mod engine;
pub mod local_store;
pub mod promote;
pub mod publish;
pub mod registry;
pub mod release;
pub mod repro;
pub mod smoke;
pub mod store;
pub mod verify;
pub mod workspace;

pub mod adapters;
pub use lane_core::{evidence, gates, layer, oci, provenance, signing, spec};
