//! Subcommands that work on files rather than on the stream.

pub mod uplift;
