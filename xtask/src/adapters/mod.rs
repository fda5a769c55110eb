pub mod keys;
pub mod validators;
