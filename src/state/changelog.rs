//! The state as its changelogs carry it (scale-out, docs/scale-out.md):
//! each committed batch of a stage partition's writes goes to one
//! compacted topic per store, partition = the stage partition, key = the
//! RocksDB key, value = the value or a tombstone. The latest value per key
//! is the state, so a partition restores by applying its changelogs from
//! the start, and a partition still on disk resumes from its checkpoint:
//! the changelog positions its state already holds.
//!
//! The checkpoint is a file beside the state, not a key in it: a key
//! would itself be a write for the changelog to carry. A stale checkpoint
//! only makes a restore apply again records the state holds (each a whole
//! value, so applying one twice is harmless); the state's own commit never
//! runs ahead of its changelog (changes are produced, and acknowledged,
//! before the state commits them).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::store::{Change, Store};
use super::{Cf, StateError};

/// The checkpoint's file in a partition's state directory.
const CHECKPOINT_FILE: &str = "changelog.checkpoint";

/// Every committed entry of `stores` as a change: a state's whole content,
/// as a changelog that starts from it would carry it.
pub fn snapshot(store: &Store, stores: &[Cf]) -> Result<Vec<Change>, StateError> {
    let mut changes = Vec::new();
    for &cf in stores {
        changes.extend(store.committed(cf)?.into_iter().map(|(key, value)| Change {
            cf,
            key,
            value: Some(value),
        }));
    }
    Ok(changes)
}

/// The changelog positions a partition's state holds: for each changelog
/// topic, the next offset to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub next: BTreeMap<String, i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {what} the changelog checkpoint {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("changelog checkpoint {path}, line {line}: expected \"<topic> <next offset>\", got {text:?}")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

impl Checkpoint {
    /// Reads the checkpoint of the state at `dir`; none yet is empty.
    pub fn read(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let path = dir.join(CHECKPOINT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
            Err(source) => {
                return Err(CheckpointError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        let mut next = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let parsed = line
                .rsplit_once(' ')
                .and_then(|(topic, offset)| Some((topic, offset.parse::<i64>().ok()?)));
            let Some((topic, offset)) = parsed.filter(|(t, o)| !t.is_empty() && *o >= 0) else {
                return Err(CheckpointError::Malformed {
                    path,
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            next.insert(topic.to_string(), offset);
        }
        Ok(Checkpoint { next })
    }

    /// Writes the checkpoint beside the state at `dir`, whole or not at
    /// all (a new file renamed over the old one).
    pub fn write(&self, dir: &Path) -> Result<(), CheckpointError> {
        let path = dir.join(CHECKPOINT_FILE);
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let text: String = self
            .next
            .iter()
            .map(|(topic, offset)| format!("{topic} {offset}\n"))
            .collect();
        let io = |what| {
            move |source| CheckpointError::Io {
                what,
                path: dir.join(CHECKPOINT_FILE),
                source,
            }
        };
        std::fs::write(&tmp, text).map_err(io("write"))?;
        std::fs::rename(&tmp, &path).map_err(io("replace"))
    }

    /// The next offset to apply of `topic`: 0 when the state holds none.
    pub fn next_of(&self, topic: &str) -> i64 {
        self.next.get(topic).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(cf: Cf, key: &str, value: Option<&str>) -> Change {
        Change {
            cf,
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn pending_changes_are_the_batch_last_write_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.put(Cf::Links, b"k1".to_vec(), b"a".to_vec());
        store.put(Cf::Links, b"k2".to_vec(), b"b".to_vec());
        store.commit().unwrap();
        assert!(
            store.pending_changes().is_empty(),
            "committed is not pending"
        );
        store.put(Cf::Links, b"k1".to_vec(), b"x".to_vec());
        store.put(Cf::Links, b"k1".to_vec(), b"y".to_vec());
        store.delete(Cf::Links, b"k2".to_vec());
        store.put(Cf::Customers, b"c".to_vec(), b"z".to_vec());
        assert_eq!(
            store.pending_changes(),
            [
                change(Cf::Links, "k1", Some("y")),
                change(Cf::Links, "k2", None),
                change(Cf::Customers, "c", Some("z")),
            ]
        );
    }

    #[test]
    fn a_resident_key_come_and_gone_in_a_batch_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.put(Cf::Timers, b"t".to_vec(), Vec::new());
        store.delete(Cf::Timers, b"t".to_vec());
        assert!(store.pending_changes().is_empty());
    }

    #[test]
    fn loading_a_snapshot_copies_a_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut from = Store::open(&dir.path().join("a")).unwrap();
        from.put(Cf::Links, b"k".to_vec(), b"v".to_vec());
        from.put(Cf::Timers, b"t".to_vec(), Vec::new());
        from.commit().unwrap();
        let mut to = Store::open(&dir.path().join("b")).unwrap();
        let stores = [Cf::Links, Cf::Timers, Cf::Anon];
        let mut changes = snapshot(&from, &stores).unwrap();
        changes.push(change(Cf::Anon, "gone", None));
        to.load_changes(changes).unwrap();
        to.flush().unwrap();
        for cf in stores {
            assert_eq!(to.committed(cf).unwrap(), from.committed(cf).unwrap());
        }
    }

    #[test]
    fn the_checkpoint_round_trips_and_a_bad_one_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), Checkpoint::default());
        let mut cp = Checkpoint::default();
        cp.next.insert("g.customer-interest-changelog".into(), 42);
        cp.next.insert("g.customer-meta-changelog".into(), 7);
        cp.write(dir.path()).unwrap();
        let back = Checkpoint::read(dir.path()).unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.next_of("g.customer-meta-changelog"), 7);
        assert_eq!(back.next_of("other"), 0);
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "a 1\nb x\n").unwrap();
        let err = Checkpoint::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("b x"), "{err}");
    }
}
