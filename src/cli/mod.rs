//! Subcommands of the `pretext` binary that live in the library, so that
//! tests and the binary share them: `inspect` (a state directory) and
//! `uplift` (a replay's output files).

pub mod inspect;
pub mod uplift;
