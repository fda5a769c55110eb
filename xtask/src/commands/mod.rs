//! One module per subcommand; each renders its own output.

pub mod audit;
pub mod bench;
pub mod build;
pub mod drift;
pub mod keygen;
pub mod lock;
pub mod promote;
pub mod publish;
pub mod release;
pub mod repro;
pub mod smoke;
pub mod verify;
