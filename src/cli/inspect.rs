//! `pretext inspect`: the query answer of contract section 9 for one
//! customer or cookie of a state directory, as of its watermark.
//!
//! The state is opened as a RocksDB secondary instance: it can be the state
//! of a running `pretext run` or `pretext replay`, which it neither locks
//! nor changes; it shows the last batch that process committed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args};

use crate::cli::to_stderr;
use crate::config::Config;
use crate::engine::partitioned::partition_dir;
use crate::engine::query::{CookieHop, Queries, Subject, DEFAULT_LIMIT, MAX_LIMIT};
use crate::engine::routing::{partition_for, Stage};
use crate::state::{Reader, Snapshot, StateError};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("subject").required(true).args(["customer", "cookie"])))]
pub struct InspectArgs {
    /// The state directory (of a replay with --state-dir, or state.dir of
    /// a live instance, running or not).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// TOML configuration: the scoring settings, the allowed lateness and
    /// the holdout the answer is computed with.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A customer's CRM id.
    #[arg(long, value_name = "CRM_ID")]
    pub customer: Option<String>,
    /// A cookie id.
    #[arg(long, value_name = "COOKIE_ID")]
    pub cookie: Option<String>,
    /// At most this many products (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT as u64))]
    pub limit: u64,
    /// The state of `replay --partitions N`: the question goes to the
    /// partition that owns the subject, as scale-out forwards it.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("give --customer CRM_ID or --cookie COOKIE_ID")]
    NoSubject,
    #[error("--state-dir {0}: no pretext state there")]
    NoState(PathBuf),
    #[error("cannot read the state at {dir}: {source}")]
    Read {
        dir: PathBuf,
        source: crate::state::StateError,
    },
    #[error("cannot make a scratch directory for reading the state: {0}")]
    Scratch(std::io::Error),
    #[error("no state for {0} (never seen, or erased)")]
    Unknown(String),
}

impl InspectError {
    /// 2 for a bad configuration or argument, 1 for the rest.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            InspectError::Config(_) | InspectError::NoSubject | InspectError::NoState(_) => {
                ExitCode::from(2)
            }
            _ => ExitCode::from(1),
        }
    }
}

/// Runs the command: the answer on stdout, or a message on stderr.
pub fn main(args: &InspectArgs) -> ExitCode {
    match inspect(args) {
        Ok(json) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{json}").and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    to_stderr(format_args!("pretext: cannot write stdout: {e}\n"));
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            to_stderr(format_args!("pretext: {e}\n"));
            e.exit_code()
        }
    }
}

/// The answer as JSON.
pub fn inspect(args: &InspectArgs) -> Result<String, InspectError> {
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let subject = match (&args.customer, &args.cookie) {
        (Some(crm_id), _) => Subject::Customer(crm_id.clone()),
        (None, Some(cookie_id)) => Subject::Cookie(cookie_id.clone()),
        (None, None) => return Err(InspectError::NoSubject),
    };
    let queries = Queries::from_config(&config);
    let limit = args.limit as usize;
    let answer = if args.partitions > 1 {
        let owner = |stage, key: &str| {
            let p = partition_for(key.as_bytes(), args.partitions as i32) as u32;
            partition_dir(&args.state_dir, stage, p)
        };
        let customer = |crm_id: &str, via: Option<&str>| {
            let dir = owner(Stage::Customer, crm_id);
            on_state(&dir, |s| queries.customer_answer(s, crm_id, via, limit))
        };
        match &subject {
            Subject::Customer(crm_id) => customer(crm_id, None)?,
            Subject::Cookie(cookie_id) => {
                let dir = owner(Stage::Identity, cookie_id);
                match on_state(&dir, |s| queries.cookie_hop(s, cookie_id, limit))? {
                    CookieHop::Customer(crm_id) => customer(&crm_id, Some(cookie_id))?,
                    CookieHop::Answered(answer) => answer,
                }
            }
        }
    } else {
        on_state(&args.state_dir, |s| queries.answer(s, &subject, limit))?
    };
    match answer {
        Some(a) => Ok(a.to_json()),
        None => Err(InspectError::Unknown(match subject {
            Subject::Customer(id) => format!("customer {id:?}"),
            Subject::Cookie(id) => format!("cookie {id:?}"),
        })),
    }
}

/// Runs `ask` on a snapshot of the state at `dir`, read beside the process
/// that may be writing it (a RocksDB secondary).
fn on_state<T>(
    dir: &Path,
    ask: impl FnOnce(&Snapshot<'_>) -> Result<T, StateError>,
) -> Result<T, InspectError> {
    if !is_state(dir) {
        return Err(InspectError::NoState(dir.to_path_buf()));
    }
    let read_err = |source| InspectError::Read {
        dir: dir.to_path_buf(),
        source,
    };
    let scratch = tempfile::Builder::new()
        .prefix("pretext-inspect")
        .tempdir()
        .map_err(InspectError::Scratch)?;
    let reader = Reader::open_secondary(dir, scratch.path()).map_err(read_err)?;
    let answer = ask(&reader.snapshot()).map_err(read_err);
    drop(reader); // before its scratch directory goes
    answer
}

fn is_state(dir: &Path) -> bool {
    dir.join("CURRENT").is_file()
}
