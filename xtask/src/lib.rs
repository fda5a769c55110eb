//! The release lane's world: adapters (file system, processes, registry,
//! Docker Engine) and commands, over the pure core in `lane-core`.
//! See ARCHITECTURE.md.

pub mod adapters;
pub mod commands;
pub mod report;
