//! The lane: the engines the commands share. Build (plan, input keys, held
//! images), drift, the reproducibility check, smoke, publish, release and
//! its gates, verify, promote and audit. A command parses its flags, calls
//! one of these and renders what it returns; no command imports another
//! (a tidy test), and nothing here imports a command.

pub mod audit;
pub mod build;
pub mod drift;
pub mod held;
pub mod input_keys;
pub mod no_secrets;
pub mod plan;
pub mod promote;
pub mod publish;
pub mod release;
pub mod repro;
pub mod smoke;
pub mod verify;
