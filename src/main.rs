//! The `pretext` binary: parses the command line and the configuration,
//! sets up logging, and hands over to the library. Exit status: 0 on
//! success, 2 on a bad configuration or arguments, 1 on any other failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use pretext::cli::interrupt::{shutdown_signal, Interrupts};
use pretext::cli::to_stderr;
use pretext::config::{Config, LogFormat};
use pretext::replay::{replay, ReplayOptions};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Has mimalloc hand freed pages back to the OS after 10 ms instead of its
/// default second. pretext's threads free what others allocated (decoded
/// events and the state read ahead for them, triggers written by the
/// output thread), and a second of such pages held 15–20 MiB more at the
/// peak of a replay (1M events of 10k customers: 288 against 269–273 MiB)
/// for no measurable speed. Replay only: live mode frees and refills the
/// same pages batch after batch, and faulting them back in each time cost
/// `pretext run` 6-7% of its time and CPU (BENCHMARKS.md, live section).
fn purge_freed_memory_promptly() {
    use std::ffi::{c_int, c_long};
    extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }
    // `mi_option_purge_delay` in mimalloc.h of the bundled mimalloc 3
    // (libmimalloc-sys 0.1.49), whose default is 1000 ms. Set only while
    // that option still reads its default: another mimalloc's numbering
    // is then left alone rather than misread.
    const PURGE_DELAY: c_int = 15;
    // SAFETY: plain mimalloc calls on an option index within its enum.
    unsafe {
        if mi_option_get(PURGE_DELAY) == 1000 {
            mi_option_set(PURGE_DELAY, 10);
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "pretext",
    version,
    about = "Real-time trigger engine for retail CRM marketing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Live mode: consume the input topics, produce triggers, serve HTTP.
    Run {
        /// TOML configuration; keys not set keep their defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Replay JSON Lines files (plain or .gz) in order and write the
    /// triggers as JSON Lines. Without --input, replays the bundled sample.
    Replay {
        /// Input files, read in the order given.
        #[arg(long, value_name = "FILE", num_args = 1.., action = ArgAction::Append)]
        input: Vec<PathBuf>,
        /// Trigger output file, or - for stdout (the default).
        #[arg(long, value_name = "FILE|-")]
        output: Option<PathBuf>,
        /// Where rejected lines go, as dead-letter JSON Lines.
        #[arg(long, value_name = "FILE")]
        dead_letter: Option<PathBuf>,
        /// Where triggers of holdout customers go (else only counted).
        #[arg(long, value_name = "FILE")]
        holdout: Option<PathBuf>,
        /// Where conversion records go (else only counted).
        #[arg(long, value_name = "FILE")]
        conversions: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Keep the state here (else a temporary directory, removed at exit).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// At the end, fire every pending check as of its own check time.
        #[arg(long)]
        flush: bool,
        /// No progress on stderr and no rate in the summary.
        #[arg(long)]
        quiet: bool,
        /// Split the engine into N partitions per stage, as N-partition
        /// scale-out does, in this one process (docs/scale-out.md).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=4096))]
        partitions: u32,
    },
    /// Generate realistic contract events (seeded, deterministic).
    Gen(pretext::gen::GenArgs),
    /// Conversion rates of treated and holdout triggers and the uplift,
    /// with 95% confidence intervals, from a replay's output files.
    Uplift(pretext::cli::uplift::UpliftArgs),
    /// Print what a state holds about a customer or a cookie (JSON).
    Inspect(pretext::cli::inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // a bad flag exits 2 with clap's message
    match cli.command {
        Command::Run { config } => {
            let config = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&config);
            run_live(config)
        }
        Command::Replay {
            input,
            output,
            dead_letter,
            holdout,
            conversions,
            config,
            state_dir,
            flush,
            quiet,
            partitions,
        } => {
            let config = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&config);
            purge_freed_memory_promptly();
            // Stops the replay at a signal, so its temporary state goes.
            let interrupts = match Interrupts::watch() {
                Ok(i) => i,
                Err(e) => return fail(&e),
            };
            let opts = ReplayOptions {
                inputs: input,
                output,
                dead_letter,
                holdout,
                conversions,
                state_dir,
                flush,
                quiet,
                partitions,
                interrupted: Some(interrupts.flag()),
            };
            match replay(&config, &opts) {
                Ok(summary) => {
                    to_stderr(format_args!("{}", summary.render()));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Gen(args) => match pretext::gen::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Uplift(args) => match pretext::cli::uplift::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Inspect(args) => pretext::cli::inspect::main(&args),
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.as_deref(), std::env::vars()).map_err(|e| {
        to_stderr(format_args!("pretext: {e}\n"));
        ExitCode::from(2)
    })
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    to_stderr(format_args!("pretext: {e}\n"));
    ExitCode::from(1)
}

/// Logs go to stderr (stdout may carry triggers), JSON unless `log.format`
/// says text.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a pipe gets plain lines.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run_live(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(pretext::live::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            to_stderr(format_args!("pretext: {e}\n"));
            ExitCode::from(e.exit_code())
        }
    }
}
