//! Replay: JSON Lines files (plain or gzip) through the engine, triggers out
//! as JSON Lines. The same engine as live mode, so a backfill gives the same
//! triggers, byte for byte.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;

use crate::cli::to_stderr;
use crate::config::Config;
use crate::deadletter::DeadLetter;
use crate::decode::{decode, Reason, Rejection};
use crate::engine::ahead::ReadAhead;
use crate::engine::partitioned::Partitioned;
use crate::engine::{Engine, EngineError, EngineStats, Outcome, Suppressed, TriggerSink};
use crate::event::Event;
use crate::progress::{Counters, Counting, Progress};
use crate::state::prefetch::{Hint, Prefetcher};
use crate::state::store::open_gate;
use crate::threads::spawn_named;
use crate::trigger::{Group, TriggerKind};

mod output;

use output::{Lines, Outputs, WrittenSink};

/// The bundled sample, replayed when no `--input` is given.
pub const SAMPLE_NAME: &str = "examples/sample.jsonl";
pub const SAMPLE: &[u8] = include_bytes!("../examples/sample.jsonl");

/// Commit the state this often, so a long replay holds a bounded overlay.
/// The commit is written in the background while the replay goes on,
/// reading through it (`Engine::commit_in_background`): the overlay and the
/// landing batch together stay within twice this. 16 MiB measured fastest
/// (12 commits too often; 24 and 32 held over 300 MiB at 10k customers).
const COMMIT_EVERY_BYTES: usize = 16 << 20;
/// Rejections described one by one on stderr when no dead-letter file is given.
const REJECTIONS_SHOWN: u64 = 20;

/// Where a replay reads from and writes to.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Input files, in order; empty means the bundled sample.
    pub inputs: Vec<PathBuf>,
    /// Trigger output file; `None` or `-` means stdout.
    pub output: Option<PathBuf>,
    pub dead_letter: Option<PathBuf>,
    /// Triggers of holdout customers; `None`: only counted.
    pub holdout: Option<PathBuf>,
    /// Conversion records; `None`: only counted.
    pub conversions: Option<PathBuf>,
    /// Persistent state; `None` means a temporary one removed at the end.
    pub state_dir: Option<PathBuf>,
    pub flush: bool,
    /// No progress on stderr (and no rate in the summary).
    pub quiet: bool,
    /// Partitions of each stage, as a scaled-out deployment with
    /// `scale.partitions` = this would split the work (`Partitioned`);
    /// 0 or 1: the one engine.
    pub partitions: u32,
    /// Raised (by a signal) to stop before the next chunk of input: the
    /// replay ends with `ReplayError::Interrupted`, its temporary state
    /// removed; a `state_dir` keeps what its last commit stored.
    pub interrupted: Option<Arc<AtomicBool>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Output { path: String, source: io::Error },
    #[error("cannot create a temporary state directory: {0}")]
    TempState(io::Error),
    #[error("interrupted by a signal before the end of the input")]
    Interrupted,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a replay did, for the summary on stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages read (lines, blank ones included).
    pub messages: u64,
    pub rejected: [u64; 8],
    pub engine: EngineStats,
    /// Wall-clock time of the replay; `None` when quiet.
    pub elapsed: Option<Duration>,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub fn rejected_of(&self, reason: Reason) -> u64 {
        self.rejected[reason_index(reason)]
    }

    /// A few human lines: events, outcomes, triggers and conversions by
    /// type and group, suppressions by reason, rejections.
    pub fn render(&self) -> String {
        let e = &self.engine;
        let mut s = format!(
            "replayed {} messages: {} applied, {} duplicate, {} ignored (erased customer), {} rejected\n",
            self.messages,
            e.applied(),
            e.duplicates,
            e.ignored_erased,
            self.rejected_total()
        );
        let by_group = |count: &dyn Fn(TriggerKind, Group) -> u64| {
            TriggerKind::ALL
                .iter()
                .map(|&k| {
                    let groups: Vec<String> = Group::ALL
                        .iter()
                        .map(|&g| format!("{} {}", g.as_str(), count(k, g)))
                        .collect();
                    format!("{} ({})", k.as_str(), groups.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "triggers: {}\n",
            by_group(&|k, g| e.triggers_in(k, g))
        ));
        s.push_str(&format!(
            "conversions: {}\n",
            by_group(&|k, g| e.conversions_in(k, g))
        ));
        let suppressed: Vec<String> = Suppressed::ALL
            .iter()
            .map(|r| format!("{} {}", r.as_str(), e.suppressed_of(*r)))
            .collect();
        s.push_str(&format!("suppressed: {}\n", suppressed.join(", ")));
        let rejected: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| self.rejected_of(**r) > 0)
            .map(|r| format!("{} {}", r.as_str(), self.rejected_of(*r)))
            .collect();
        if !rejected.is_empty() {
            s.push_str(&format!("rejected: {}\n", rejected.join(", ")));
        }
        if let Some(d) = self.elapsed {
            let secs = d.as_secs_f64().max(1e-3);
            s.push_str(&format!(
                "time: {secs:.1} s, {:.0} events/s\n",
                self.messages as f64 / secs
            ));
        }
        s
    }
}

fn reason_index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

/// The outputs `opts` names, opened.
fn open_outputs(opts: &ReplayOptions) -> Result<Outputs, ReplayError> {
    let optional = |path: Option<&Path>| -> Result<Lines, ReplayError> {
        Ok(Lines {
            name: path.map_or_else(String::new, |p| p.display().to_string()),
            out: path.map(create_file).transpose()?,
        })
    };
    Ok(Outputs {
        triggers: Lines {
            name: display_output(&opts.output),
            out: Some(open_output(&opts.output)?),
        },
        holdout: optional(opts.holdout.as_deref())?,
        conversions: optional(opts.conversions.as_deref())?,
    })
}

/// A decoded line, as the reader thread hands it to the engine.
enum Decoded {
    /// With the state its application reads, read ahead.
    Event(Event, Vec<Hint>),
    Rejected {
        line_no: i64,
        rejection: Rejection,
        payload: Vec<u8>,
    },
}

/// Consecutive lines of one input, decoded.
struct Chunk {
    input: String,
    lines: Vec<Decoded>,
}

/// Lines per chunk: large enough that the channel costs nothing per line,
/// small enough that little is decoded ahead: with the state read ahead
/// for each event, 8 chunks of 1,024 held ~25 MiB at 10k customers (whose
/// records are long) for no gain in speed.
const CHUNK_LINES: usize = 512;
/// Chunks decoded ahead of the engine, at most.
const CHUNKS_AHEAD: usize = 4;

/// Replays the inputs through a fresh or persistent engine. One thread
/// reads and decodes while this one applies, in input order.
pub fn replay(config: &Config, opts: &ReplayOptions) -> Result<Summary, ReplayError> {
    let temp;
    let state_dir: &Path = match &opts.state_dir {
        Some(d) => d,
        None => {
            temp = tempfile::Builder::new()
                .prefix("pretext-replay-")
                .tempdir()
                .map_err(ReplayError::TempState)?;
            temp.path()
        }
    };
    let mut engine: Box<dyn Replayed> = if opts.partitions > 1 {
        Box::new(Partitioned::open(state_dir, config, opts.partitions)?)
    } else {
        Box::new(Engine::open(state_dir, config)?)
    };
    let max_bytes = config.input.max_message_bytes;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let progress = (!opts.quiet).then(|| Progress::start(counters.clone(), total_bytes(opts)));
    let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
    let reader_counters = counters.clone();
    let mut ahead = engine.prefetcher().map(ReadAhead::new);
    let mut summary = std::thread::scope(|scope| {
        spawn_named(scope, "pretext-read", move || {
            if let Err(e) = read_inputs(&opts.inputs, max_bytes, &mut ahead, &tx, &reader_counters)
            {
                // The engine side stops at the error, before end of input.
                let _ = tx.send(Err(e));
            }
        });
        apply_chunks(engine.as_mut(), opts, rx, &counters)
    })?;
    drop(progress);
    summary.elapsed = (!opts.quiet).then(|| started.elapsed());
    Ok(summary)
}

/// The sum of the input sizes, when every one is known.
fn total_bytes(opts: &ReplayOptions) -> Option<u64> {
    if opts.inputs.is_empty() {
        return Some(SAMPLE.len() as u64);
    }
    opts.inputs
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
        .sum()
}

/// Reads and decodes every input in order, a chunk at a time. Stops
/// quietly when the engine side hung up (it reports its own error).
fn read_inputs(
    inputs: &[PathBuf],
    max_bytes: usize,
    ahead: &mut Option<ReadAhead>,
    tx: &std::sync::mpsc::SyncSender<Result<Chunk, ReplayError>>,
    counters: &Arc<Counters>,
) -> Result<(), ReplayError> {
    let mut send_all = |name: &str, reader: &mut dyn Read| {
        let mut chunk = Vec::with_capacity(CHUNK_LINES);
        let send = |chunk: &mut Vec<Decoded>| {
            let lines = std::mem::replace(chunk, Vec::with_capacity(CHUNK_LINES));
            let input = name.to_string();
            tx.send(Ok(Chunk { input, lines })).is_ok()
        };
        for_each_line(name, reader, &mut |line_no, line| {
            chunk.push(match decode(line, max_bytes) {
                Ok(event) => {
                    let hints = ahead.as_mut().map_or_else(Vec::new, |a| a.read(&event));
                    Decoded::Event(event, hints)
                }
                Err(rejection) => Decoded::Rejected {
                    line_no,
                    rejection,
                    payload: line.to_vec(),
                },
            });
            Ok(chunk.len() < CHUNK_LINES || send(&mut chunk))
        })?;
        if !chunk.is_empty() {
            send(&mut chunk);
        }
        Ok::<_, ReplayError>(())
    };
    if inputs.is_empty() {
        counters
            .bytes
            .fetch_add(SAMPLE.len() as u64, Ordering::Relaxed);
        send_all(SAMPLE_NAME, &mut &SAMPLE[..])?;
    }
    for path in inputs {
        let name = path.display().to_string();
        send_all(&name, &mut open_input(path, counters)?)?;
    }
    Ok(())
}

/// Applies decoded chunks in order, dead-letters the rejections, and ends
/// the replay: end of input, the optional flush, the last commit.
fn apply_chunks(
    engine: &mut dyn Replayed,
    opts: &ReplayOptions,
    rx: std::sync::mpsc::Receiver<Result<Chunk, ReplayError>>,
    counters: &Counters,
) -> Result<Summary, ReplayError> {
    let mut sink = WrittenSink::start(open_outputs(opts)?)?;
    let mut dead = DeadLetters::open(opts.dead_letter.as_deref())?;
    let mut summary = Summary::default();
    for chunk in rx {
        if opts
            .interrupted
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(ReplayError::Interrupted);
        }
        let chunk = chunk?;
        let n = chunk.lines.len() as u64;
        for line in chunk.lines {
            summary.messages += 1;
            match line {
                Decoded::Event(event, hints) => {
                    engine.apply(&event, hints, &mut sink)?;
                    sink.check()?;
                    if engine.uncommitted_bytes() > COMMIT_EVERY_BYTES {
                        engine.commit_as_it_goes()?;
                    }
                }
                Decoded::Rejected {
                    line_no,
                    rejection,
                    payload,
                } => {
                    summary.rejected[reason_index(rejection.reason)] += 1;
                    dead.write(&DeadLetter {
                        error: &rejection.error,
                        reason: rejection.reason,
                        topic: &chunk.input,
                        partition: 0,
                        offset: line_no,
                        payload: &payload,
                    })?;
                }
            }
        }
        counters.messages.fetch_add(n, Ordering::Relaxed);
    }
    engine.end_of_input(&mut sink)?;
    if opts.flush {
        engine.flush(&mut sink)?;
    }
    sink.check()?;
    engine.commit()?;
    sink.finish()?;
    dead.finish()?;
    summary.engine = engine.stats();
    Ok(summary)
}

/// What a replay drives: the one engine, or the engine partitioned as a
/// scaled-out deployment would partition it.
trait Replayed {
    /// Applies `event`, with what was read ahead for it (`hints`).
    fn apply(
        &mut self,
        event: &Event,
        hints: Vec<Hint>,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError>;
    /// A reader of the state to read ahead with, when the engine uses it.
    fn prefetcher(&self) -> Option<Prefetcher>;
    fn uncommitted_bytes(&self) -> usize;
    /// Commits the state so far while the replay goes on.
    fn commit_as_it_goes(&mut self) -> Result<(), EngineError>;
    fn end_of_input(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError>;
    fn flush(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError>;
    fn commit(&mut self) -> Result<(), EngineError>;
    fn stats(&self) -> EngineStats;
}

impl Replayed for Engine {
    fn apply(
        &mut self,
        event: &Event,
        hints: Vec<Hint>,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        Engine::apply_read_ahead(self, event, hints, sink)
    }
    fn prefetcher(&self) -> Option<Prefetcher> {
        Some(Engine::prefetcher(self))
    }
    fn uncommitted_bytes(&self) -> usize {
        Engine::uncommitted_bytes(self)
    }
    fn commit_as_it_goes(&mut self) -> Result<(), EngineError> {
        // Nothing to wait for: replay writes its output as it goes and
        // stores no input offsets.
        self.commit_in_background(&[], open_gate())
    }
    fn end_of_input(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        Engine::end_of_input(self, sink)
    }
    fn flush(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        Engine::flush(self, sink)
    }
    fn commit(&mut self) -> Result<(), EngineError> {
        Engine::commit(self, &[])
    }
    fn stats(&self) -> EngineStats {
        Engine::stats(self).clone()
    }
}

impl Replayed for Partitioned {
    fn apply(
        &mut self,
        event: &Event,
        _: Vec<Hint>,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        Partitioned::apply(self, event, sink)
    }
    /// Its events cross partitions: nothing is read ahead.
    fn prefetcher(&self) -> Option<Prefetcher> {
        None
    }
    fn uncommitted_bytes(&self) -> usize {
        Partitioned::uncommitted_bytes(self)
    }
    fn commit_as_it_goes(&mut self) -> Result<(), EngineError> {
        Partitioned::commit(self)
    }
    fn end_of_input(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        Partitioned::end_of_input(self, sink)
    }
    fn flush(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        Partitioned::flush(self, sink)
    }
    fn commit(&mut self) -> Result<(), EngineError> {
        Partitioned::commit(self)
    }
    fn stats(&self) -> EngineStats {
        Partitioned::stats(self)
    }
}

/// What `for_each_line` calls: (line number, line) → go on?
type LineHandler<'a> = dyn FnMut(i64, &[u8]) -> Result<bool, ReplayError> + 'a;

/// Calls `f(line_number, line)` for each line until it returns false:
/// 1-based numbers, the newline stripped, a blank line is a message, a final
/// newline is not. `name` names the input in errors.
fn for_each_line(
    name: &str,
    reader: &mut dyn Read,
    f: &mut LineHandler<'_>,
) -> Result<(), ReplayError> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0i64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| ReplayError::Input {
                path: name.to_string(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !f(line_no, &line)? {
            return Ok(());
        }
    }
}

fn open_input(path: &Path, counters: &Arc<Counters>) -> Result<Box<dyn Read>, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Input {
        path: path.display().to_string(),
        source,
    })?;
    let file = Counting {
        inner: file,
        counters: counters.clone(),
    };
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

fn is_stdout(output: &Option<PathBuf>) -> bool {
    output.as_ref().is_none_or(|p| p.as_os_str() == "-")
}

fn display_output(output: &Option<PathBuf>) -> String {
    match output {
        Some(p) if !is_stdout(output) => p.display().to_string(),
        _ => "stdout".to_string(),
    }
}

fn open_output(output: &Option<PathBuf>) -> Result<Box<dyn Write + Send>, ReplayError> {
    if is_stdout(output) {
        return Ok(Box::new(BufWriter::with_capacity(1 << 20, io::stdout())));
    }
    let path = output
        .as_ref()
        .map(|p| p.as_path())
        .unwrap_or(Path::new("-"));
    create_file(path)
}

fn create_file(path: &Path) -> Result<Box<dyn Write + Send>, ReplayError> {
    let file = File::create(path).map_err(|source| ReplayError::Output {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Box::new(BufWriter::with_capacity(1 << 20, file)))
}

/// Rejected lines: to the `--dead-letter` file when given, else described
/// on stderr (the first few) — counted either way, never dropped silently.
struct DeadLetters {
    file: Option<(String, BufWriter<File>)>,
    shown: u64,
}

impl DeadLetters {
    fn open(path: Option<&Path>) -> Result<DeadLetters, ReplayError> {
        let file = match path {
            Some(p) => {
                let f = File::create(p).map_err(|source| ReplayError::Output {
                    path: p.display().to_string(),
                    source,
                })?;
                Some((p.display().to_string(), BufWriter::new(f)))
            }
            None => None,
        };
        Ok(DeadLetters { file, shown: 0 })
    }

    fn write(&mut self, letter: &DeadLetter<'_>) -> Result<(), ReplayError> {
        if let Some((path, out)) = &mut self.file {
            let mut line = letter.to_json();
            line.push('\n');
            return out
                .write_all(line.as_bytes())
                .map_err(|source| ReplayError::Output {
                    path: path.clone(),
                    source,
                });
        }
        self.shown += 1;
        if self.shown <= REJECTIONS_SHOWN {
            to_stderr(format_args!(
                "rejected {}:{}: {} ({})\n",
                letter.topic,
                letter.offset,
                letter.error,
                letter.reason.as_str()
            ));
        } else if self.shown == REJECTIONS_SHOWN + 1 {
            to_stderr(format_args!(
                "more rejections not shown: pass --dead-letter FILE to keep them all\n"
            ));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ReplayError> {
        if let Some((path, out)) = &mut self.file {
            out.flush().map_err(|source| ReplayError::Output {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}
