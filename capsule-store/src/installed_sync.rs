//! The background sync of installed-version records written without waiting for the disk.
//! Contract: every record queued before [`Unsynced::flush`] is durable (file, its directory
//! and the records' root synced) when `flush` returns `Ok`, and any record is synced within
//! about [`GATHER`] plus the sync itself; one worker thread at a time waits up to [`GATHER`]
//! for more records (not when a flush waits), takes every record queued so far and syncs each
//! file, then each directory once, so a burst of first loads costs a few journal commits per
//! batch rather than two `fsync`s per record, and the loads are not stalled by a commit per
//! record; the worker exits when the queue is empty, so an idle host holds no thread for it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Longest the worker waits for more records before syncing what it has.
pub(crate) const GATHER: Duration = Duration::from_millis(50);

/// A sync failure: the file or directory, and why.
pub(crate) type SyncFailure = (PathBuf, std::io::Error);

/// Records written but not yet known durable, and the worker syncing them.
#[derive(Debug)]
pub(crate) struct Unsynced {
    root: PathBuf,
    state: Mutex<Queue>,
    synced: Condvar,
    /// Cuts the worker's gathering wait short when a flush is waiting.
    urgent: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    files: Vec<PathBuf>,
    /// Records queued since creation.
    queued: u64,
    /// Of those, how many the worker has synced (or found failing).
    synced: u64,
    /// Whether a worker is running.
    worker: bool,
    /// Flushes waiting (the worker then syncs without gathering).
    flushing: usize,
    /// The first failure since the last flush.
    failed: Option<SyncFailure>,
}

impl Unsynced {
    /// Nothing queued yet for the records under `root`.
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            state: Mutex::new(Queue::default()),
            synced: Condvar::new(),
            urgent: Condvar::new(),
        }
    }

    /// Queues `file` (already written) for the background sync, starting the worker if none
    /// runs.
    pub(crate) fn queue(self: &Arc<Self>, file: PathBuf) {
        let mut q = self.state.lock();
        q.files.push(file);
        q.queued += 1;
        if q.worker {
            return;
        }
        q.worker = true;
        drop(q);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("installed-sync".into())
            .spawn(move || me.work());
        if spawned.is_err() {
            // No thread to be had: sync here rather than leave the records unsynced.
            self.work();
        }
    }

    /// Syncs batches until the queue is empty.
    fn work(&self) {
        loop {
            let (batch, upto) = {
                let mut q = self.state.lock();
                if !q.files.is_empty() && q.flushing == 0 {
                    // Woken early by a flush, or not: either way the batch is taken now.
                    let _waited = self.urgent.wait_for(&mut q, GATHER);
                }
                if q.files.is_empty() {
                    q.worker = false;
                    self.synced.notify_all();
                    return;
                }
                (std::mem::take(&mut q.files), q.queued)
            };
            let outcome = sync_batch(&self.root, &batch);
            let mut q = self.state.lock();
            q.synced = upto;
            if let Err(failure) = outcome {
                q.failed.get_or_insert(failure);
            }
            self.synced.notify_all();
        }
    }

    /// Waits until everything queued before this call is synced; returns the first failure
    /// since the last flush.
    pub(crate) fn flush(&self) -> Result<(), SyncFailure> {
        let mut q = self.state.lock();
        let target = q.queued;
        q.flushing += 1;
        self.urgent.notify_all();
        while q.synced < target && q.worker {
            self.synced.wait(&mut q);
        }
        q.flushing -= 1;
        q.failed.take().map_or(Ok(()), Err)
    }

    /// Records queued and not yet synced.
    pub(crate) fn pending(&self) -> u64 {
        let q = self.state.lock();
        q.queued - q.synced
    }
}

/// Syncs every file of `batch` (a file since replaced or removed has nothing left to make
/// durable), then each of their directories once, then `root`, which holds the owners'
/// directories a first record may have created.
fn sync_batch(root: &Path, batch: &[PathBuf]) -> Result<(), SyncFailure> {
    let mut dirs = BTreeSet::new();
    for file in batch {
        match std::fs::File::open(file).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err((file.clone(), e)),
        }
        if let Some(dir) = file.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    dirs.insert(root.to_path_buf());
    for dir in dirs {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (dir.clone(), e))?;
    }
    Ok(())
}
