//! Subcommands of the `pretext` binary that live in the library, so that
//! tests and the binary share them.

pub mod inspect;
pub mod uplift;
