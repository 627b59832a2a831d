//! Subcommands of the `pretext` binary that live in the library, so that
//! tests and the binary share them: `inspect` (a state directory),
//! `uplift` (a replay's output files), and the signals both modes stop on.

pub mod inspect;
pub mod interrupt;
pub mod uplift;

use std::io::Write;

/// Writes a message to stderr, ignoring a stderr that is closed or full:
/// the message has nowhere to go, and the exit status still says how the
/// command ended (`eprint!` would panic, and exit 101).
pub fn to_stderr(message: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().write_fmt(message);
}
