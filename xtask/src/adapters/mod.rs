pub mod cargo_deps;
pub mod keys;
pub mod validators;
