//! Adapters: the only code that touches the outside world (file system,
//! processes, network, Docker Engine). Each wraps one component.

pub mod apt;
pub mod base;
pub mod cache;
pub mod engine;
pub mod keys;
pub mod layout;
pub mod local_store;
pub mod registry;
pub mod registry_store;
pub mod workspace;
