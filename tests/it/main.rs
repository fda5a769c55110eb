//! The end-to-end tests: one test binary, one module per command or
//! concern, over the shared harness in `support` (temporary workspaces, the
//! real Distribution registry, a fault-injecting proxy). They run the xtask
//! binary against temporary workspaces, the real registry and the real
//! Docker Engine. Filter one module with `cargo nextest run -E 'test(/^drift::/)'`.

mod support;

mod bench;
mod build;
mod debian;
mod docker_load;
mod drift;
mod faults;
mod identity;
mod inputs;
mod promote_mount;
mod publish;
mod python;
mod registry_base;
mod release;
mod release_registry;
mod reuse;
mod shared_cache;
mod smoke;
mod verify;
