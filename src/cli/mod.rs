//! Subcommands that work on files rather than on the stream: `inspect` (a
//! state directory) and `uplift` (a replay's output files).

pub mod inspect;
pub mod uplift;
