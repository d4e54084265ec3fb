//! Group commit for KV writes: one committer thread per database takes every write queued
//! while the previous commit was in flight (up to a bound) into a single durable redb write
//! transaction. Contract:
//!
//! - a caller is answered only from the outcome of the transaction that held its write: `Ok`
//!   only after that transaction's durable commit returned;
//! - writes in a group are applied in arrival order, each checked (CAS, quota) against the
//!   state the writes before it in the same group left, so per-principal usage stays exact; a
//!   refused write changes nothing and the rest of the group goes on;
//! - a group whose transaction fails (a storage error while applying or committing) is
//!   aborted whole, so nothing of it is visible and nothing before it is lost; each of its
//!   writes is then retried in a transaction of its own, so one write that cannot be stored
//!   fails alone;
//! - waiting for a commit holds no thread of the caller's: async callers await a one-shot
//!   answer, so a thousand writers cost a thousand small queue entries, not a thousand
//!   blocked threads; if the committer is gone, callers get a storage error, never a hang;
//! - a write that arrives when no other write is in flight is not handed to the committer:
//!   the caller gets it back as a [`Lone`] write and commits it in its own transaction on a
//!   thread of its own, so a single writer pays no hand-off to the committer and back. At
//!   most one lone write exists at a time (it counts as in flight), so writes arriving
//!   meanwhile queue for the committer and are grouped; redb runs write transactions one
//!   after another, so a lone commit and a group commit never see each other's halves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capsule_ids::PrincipalId;
use futures::channel::oneshot;
use parking_lot::Mutex;
use redb::{Database, ReadableTable, Table, TableDefinition};

use crate::kv::{ENTRIES, KvError, USAGE};

/// Most writes one transaction takes.
const MAX_GROUP_WRITES: usize = 256;
/// Most value bytes one transaction takes (a single larger write still goes alone).
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Longest a committer waits for the writers of its last group to queue again.
pub(crate) const MAX_GATHER: Duration = Duration::from_micros(500);

/// What the KV writes cost so far: how many durable transactions, how many writes the group
/// committer took, and how long its commits took (for benchmarks and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable transactions committed, lone and grouped.
    pub commits: u64,
    /// Transactions the group committer ran.
    pub group_commits: u64,
    /// Writes the group committer answered (lone writes not included).
    pub grouped_writes: u64,
    /// Nanoseconds the group committer spent applying and committing its groups.
    pub group_commit_ns: u64,
}

/// The counters behind [`CommitStats`].
#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    group_commits: AtomicU64,
    grouped_writes: AtomicU64,
    group_commit_ns: AtomicU64,
}

/// What one write does to its key.
#[derive(Debug)]
pub(crate) enum Change {
    /// Stores `new`, if the current value equals `expected` (when given), within `quota`.
    Put {
        /// `Some(v)`: compare-and-set against `v` (`None` = absent).
        expected: Option<Option<Vec<u8>>>,
        /// The value to store.
        new: Vec<u8>,
        /// Bytes the principal may hold in KV.
        quota: u64,
    },
    /// Removes the key if present.
    Delete,
    /// Fails with a storage error when applied, to exercise group failure in tests.
    #[cfg(test)]
    Broken,
}

/// One queued write: its full database key and what to do there.
#[derive(Debug)]
pub(crate) struct Write {
    /// Whose usage the write changes.
    pub(crate) principal: PrincipalId,
    /// The namespaced key in the entries table.
    pub(crate) full: String,
    /// Length of the key the guest gave (what the quota charges besides the value).
    pub(crate) key_len: usize,
    /// The change.
    pub(crate) change: Change,
}

impl Write {
    fn bytes(&self) -> usize {
        match &self.change {
            Change::Put { new, .. } => new.len(),
            Change::Delete => 0,
            #[cfg(test)]
            Change::Broken => 0,
        }
    }
}

type Outcome = Result<(), KvError>;

/// Where a write's outcome goes.
#[derive(Debug)]
enum Reply {
    /// A thread blocked in [`GroupCommit::submit`].
    Blocking(mpsc::SyncSender<Outcome>),
    /// A task awaiting [`Pending`].
    Async(oneshot::Sender<Outcome>),
}

impl Reply {
    fn send(self, outcome: Outcome) {
        // A caller that stopped waiting (an unloaded capsule) needs no answer.
        match self {
            Reply::Blocking(tx) => drop(tx.send(outcome)),
            Reply::Async(tx) => drop(tx.send(outcome)),
        }
    }
}

type Queued = (Write, Reply);

/// A write queued with the group committer (`KvStore::queue_set` and kin): resolves to its
/// outcome once the transaction that held it committed durably (`Ok`) or refused or failed it.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Outcome>);

impl Pending {
    /// The write's outcome.
    pub async fn outcome(self) -> Result<(), KvError> {
        self.0.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> KvError {
    KvError::Storage("the KV committer has stopped".into())
}

/// A checked write handed back to its caller: either queued for the committer, or the only
/// write in flight, for the caller to commit itself.
#[derive(Debug)]
pub enum Ticket {
    /// Queued behind a commit in flight: await its outcome.
    Queued(Pending),
    /// Nothing else was in flight: commit it with [`Lone::commit`] on a thread that may block.
    Lone(Lone),
}

/// The one write in flight when it arrived, to be committed by its caller in a transaction of
/// its own. While it exists, later writes queue for the committer; dropping it uncommitted
/// stores nothing.
#[derive(Debug)]
pub struct Lone {
    write: Write,
    db: Arc<Database>,
    in_flight: Arc<AtomicUsize>,
    counters: Arc<Counters>,
}

impl Lone {
    /// Commits the write durably on the calling thread (which blocks for the commit) and
    /// returns its outcome: `Ok` only once the transaction holding it is durable.
    pub fn commit(self) -> Result<(), KvError> {
        let (mut answers, committed) =
            commit_or_split(&self.db, ENTRIES, USAGE, std::iter::once(&self.write));
        self.counters
            .commits
            .fetch_add(committed, Ordering::Relaxed);
        answers
            .pop()
            .unwrap_or_else(|| Err(KvError::Storage("no outcome".into())))
    }
}

impl Drop for Lone {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The committer thread of one KV database and the queue feeding it.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    db: Arc<Database>,
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// Writes queued or being committed, lone ones included; a write finding it zero goes
    /// lone.
    in_flight: Arc<AtomicUsize>,
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

impl GroupCommit {
    /// Starts the committer for `db`.
    pub(crate) fn start(db: Arc<Database>) -> Result<Self, KvError> {
        let (tx, rx) = mpsc::channel::<Queued>();
        let counters = Arc::new(Counters::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (counted, answered, own) = (
            Arc::clone(&counters),
            Arc::clone(&in_flight),
            Arc::clone(&db),
        );
        let thread = std::thread::Builder::new()
            .name("capsule-kv-commit".into())
            .spawn(move || committer(&own, &rx, &counted, &answered))
            .map_err(|e| KvError::Storage(format!("cannot start the KV committer: {e}")))?;
        Ok(Self {
            db,
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            counters,
            in_flight,
        })
    }

    /// `write` back as a [`Lone`] if nothing else is in flight, else queued with `reply`.
    fn route(&self, write: Write, reply: impl FnOnce() -> Reply) -> Result<Option<Lone>, KvError> {
        if self
            .in_flight
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(Some(Lone {
                write,
                db: Arc::clone(&self.db),
                in_flight: Arc::clone(&self.in_flight),
                counters: Arc::clone(&self.counters),
            }));
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let queue = self.queue.lock();
        let sent = match queue.as_ref() {
            Some(tx) => tx.send((write, reply())).is_ok(),
            None => false,
        };
        if sent {
            Ok(None)
        } else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            Err(gone())
        }
    }

    /// Commits `write` (in place if nothing else is in flight, else in the committer's next
    /// group) and blocks the calling thread until its outcome is known.
    pub(crate) fn submit(&self, write: Write) -> Outcome {
        let (tx, rx) = mpsc::sync_channel(1);
        match self.route(write, || Reply::Blocking(tx))? {
            Some(lone) => lone.commit(),
            None => rx.recv().unwrap_or_else(|_| Err(gone())),
        }
    }

    /// Hands `write` back as a [`Lone`] if nothing else is in flight, else queues it without
    /// waiting.
    pub(crate) fn enqueue(&self, write: Write) -> Result<Ticket, KvError> {
        let (tx, rx) = oneshot::channel();
        Ok(match self.route(write, || Reply::Async(tx))? {
            Some(lone) => Ticket::Lone(lone),
            None => Ticket::Queued(Pending(rx)),
        })
    }

    /// Durable transactions committed so far.
    pub(crate) fn commits(&self) -> u64 {
        self.counters.commits.load(Ordering::Relaxed)
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> CommitStats {
        let c = &self.counters;
        CommitStats {
            commits: c.commits.load(Ordering::Relaxed),
            group_commits: c.group_commits.load(Ordering::Relaxed),
            grouped_writes: c.grouped_writes.load(Ordering::Relaxed),
            group_commit_ns: c.group_commit_ns.load(Ordering::Relaxed),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has answered what is queued; joining
        // it releases its handle on the database before the store's own goes.
        self.queue.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            drop(thread.join());
        }
    }
}

/// The committer loop: waits for one write, takes whatever else is queued (waiting briefly
/// for the writers its last group answered), commits, answers.
fn committer(
    db: &Database,
    rx: &mpsc::Receiver<Queued>,
    counters: &Counters,
    in_flight: &AtomicUsize,
) {
    let mut carry: Option<Queued> = None;
    // Writers the last group answered, and how long its commit took.
    let (mut expected, mut last) = (0usize, Duration::ZERO);
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv() {
                Ok(q) => q,
                Err(_) => return,
            },
        };
        let deadline = Instant::now() + (last / 4).min(MAX_GATHER);
        let mut bytes = first.0.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_WRITES {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(TryRecvError::Empty) if batch.len() < expected => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(next) => next,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            };
            if bytes.saturating_add(next.0.bytes()) > MAX_GROUP_BYTES {
                carry = Some(next);
                break;
            }
            bytes = bytes.saturating_add(next.0.bytes());
            batch.push(next);
        }
        let started = Instant::now();
        let (answers, committed) =
            commit_or_split(db, ENTRIES, USAGE, batch.iter().map(|(w, _)| w));
        last = started.elapsed();
        counters.commits.fetch_add(committed, Ordering::Relaxed);
        counters
            .group_commits
            .fetch_add(committed, Ordering::Relaxed);
        counters
            .grouped_writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.group_commit_ns.fetch_add(
            u64::try_from(last.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let answered = batch.len();
        expected = answered;
        for ((_, reply), answer) in batch.into_iter().zip(answers) {
            reply.send(answer);
        }
        in_flight.fetch_sub(answered, Ordering::AcqRel);
    }
}

/// Commits `writes` as one group; if the group fails and held more than one write, commits
/// each alone. Returns each write's outcome, in order, and how many commits succeeded.
pub(crate) fn commit_or_split<'w>(
    db: &Database,
    entries: TableDefinition<'_, &str, &[u8]>,
    usage: TableDefinition<'_, &str, u64>,
    writes: impl ExactSizeIterator<Item = &'w Write> + Clone,
) -> (Vec<Outcome>, u64) {
    let n = writes.len();
    match commit_group(db, entries, usage, writes.clone()) {
        Ok(answers) => (answers, 1),
        Err(e) if n == 1 => (vec![Err(e)], 0),
        Err(e) => {
            tracing::warn!(error = %e, writes = n, "a KV group commit failed; committing its writes one by one");
            let mut commits = 0;
            let answers = writes
                .map(
                    |w| match commit_group(db, entries, usage, std::iter::once(w)) {
                        Ok(mut one) => {
                            commits += 1;
                            one.pop()
                                .unwrap_or(Err(KvError::Storage("no outcome".into())))
                        }
                        Err(e) => Err(e),
                    },
                )
                .collect();
            (answers, commits)
        }
    }
}

/// One write transaction applying `writes` in order; `Err` if the transaction as a whole
/// failed (then nothing of it was stored).
fn commit_group<'w>(
    db: &Database,
    entries: TableDefinition<'_, &str, &[u8]>,
    usage: TableDefinition<'_, &str, u64>,
    writes: impl Iterator<Item = &'w Write>,
) -> Result<Vec<Outcome>, KvError> {
    let txn = db.begin_write().map_err(storage)?;
    let answers = {
        let mut entries = txn.open_table(entries).map_err(storage)?;
        let mut usage = txn.open_table(usage).map_err(storage)?;
        writes
            .map(|w| apply(&mut entries, &mut usage, w))
            .collect::<Result<Vec<_>, _>>()?
    };
    txn.commit().map_err(storage)?;
    Ok(answers)
}

/// Applies one write inside the group's transaction: the outer error fails the whole group,
/// the inner one refuses this write alone (having changed nothing).
fn apply(
    entries: &mut Table<'_, &str, &[u8]>,
    usage: &mut Table<'_, &str, u64>,
    w: &Write,
) -> Result<Outcome, KvError> {
    let principal = w.principal.as_str();
    let used = usage
        .get(principal)
        .map_err(storage)?
        .map_or(0, |v| v.value());
    match &w.change {
        Change::Put {
            expected,
            new,
            quota,
        } => {
            let current = entries.get(w.full.as_str()).map_err(storage)?;
            let current_len = current.as_ref().map(|v| v.value().len());
            if let Some(expected) = expected
                && current.as_ref().map(|v| v.value()) != expected.as_deref()
            {
                return Ok(Err(KvError::CasMismatch));
            }
            drop(current);
            let old = current_len.map_or(0, |len| (w.key_len + len) as u64);
            let needed = used - old.min(used) + (w.key_len + new.len()) as u64;
            if needed > *quota && needed > used {
                return Ok(Err(KvError::Quota {
                    needed,
                    quota: *quota,
                }));
            }
            entries
                .insert(w.full.as_str(), new.as_slice())
                .map_err(storage)?;
            usage.insert(principal, needed).map_err(storage)?;
        }
        Change::Delete => {
            let removed = entries
                .remove(w.full.as_str())
                .map_err(storage)?
                .map(|v| v.value().len());
            if let Some(len) = removed {
                let freed = (w.key_len + len) as u64;
                usage
                    .insert(principal, used.saturating_sub(freed))
                    .map_err(storage)?;
            }
        }
        #[cfg(test)]
        Change::Broken => return Err(KvError::Storage("a broken write".into())),
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{ENTRIES, USAGE};
    use crate::{KvStore, Namespace};

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap_or_else(|e| panic!("{e}"));
        (dir, kv)
    }

    fn put(p: &str, key: &str, value: &[u8], quota: u64) -> Write {
        write(
            p,
            key,
            Change::Put {
                expected: None,
                new: value.to_vec(),
                quota,
            },
        )
    }

    fn write(p: &str, key: &str, change: Change) -> Write {
        let ns = Namespace::new(&pid(p), "c");
        Write {
            principal: pid(p),
            full: ns.key(key),
            key_len: key.len(),
            change,
        }
    }

    fn get(kv: &KvStore, p: &str, key: &str) -> Option<Vec<u8>> {
        kv.get(&Namespace::new(&pid(p), "c"), key)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_group_checks_each_write_against_the_ones_before_it() {
        let (_d, kv) = store();
        let db = kv.database();
        let writes = [
            put("a", "k1", &[1; 100], 250),
            put("a", "k2", &[2; 100], 250),
            // 102 + 102 + 102 > 250: refused for quota, and only this write.
            put("a", "k3", &[3; 100], 250),
            write(
                "b",
                "k",
                Change::Put {
                    expected: Some(Some(b"x".to_vec())),
                    new: b"y".to_vec(),
                    quota: 250,
                },
            ),
            put("b", "k", &[4; 10], 250),
            // Replaces k1 in the same group: charged the difference only.
            put("a", "k1", &[5; 40], 250),
        ];
        let (answers, commits) = commit_or_split(&db, ENTRIES, USAGE, writes.iter());
        assert_eq!(commits, 1, "one transaction for the group");
        let kinds: Vec<_> = answers
            .iter()
            .map(|a| match a {
                Ok(()) => "ok",
                Err(KvError::Quota { .. }) => "quota",
                Err(KvError::CasMismatch) => "cas",
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(kinds, ["ok", "ok", "quota", "cas", "ok", "ok"]);
        assert_eq!(get(&kv, "a", "k1"), Some(vec![5; 40]));
        assert_eq!(get(&kv, "a", "k2"), Some(vec![2; 100]));
        assert_eq!(get(&kv, "a", "k3"), None);
        assert_eq!(get(&kv, "b", "k"), Some(vec![4; 10]));
        assert_eq!(kv.usage(&pid("a")).ok(), Some(42 + 102));
        assert_eq!(kv.usage(&pid("b")).ok(), Some(11));
    }

    #[test]
    fn a_failed_group_stores_nothing_and_its_good_writes_commit_alone() {
        let (_d, kv) = store();
        let db = kv.database();
        kv.set(&Namespace::new(&pid("a"), "c"), "old", b"acked", 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let writes = [
            put("a", "x", b"1", 1 << 20),
            write("b", "bad", Change::Broken),
            put("a", "old", b"replaced", 1 << 20),
        ];
        assert!(commit_group(&db, ENTRIES, USAGE, writes.iter()).is_err());
        assert_eq!(get(&kv, "a", "x"), None, "the aborted group left nothing");
        assert_eq!(
            get(&kv, "a", "old"),
            Some(b"acked".to_vec()),
            "nor lost anything"
        );
        assert_eq!(kv.usage(&pid("a")).ok(), Some(8));

        let (answers, commits) = commit_or_split(&db, ENTRIES, USAGE, writes.iter());
        assert_eq!(commits, 2);
        assert!(answers[0].is_ok() && answers[2].is_ok());
        assert!(matches!(answers[1], Err(KvError::Storage(_))));
        assert_eq!(get(&kv, "a", "x"), Some(b"1".to_vec()));
        assert_eq!(get(&kv, "a", "old"), Some(b"replaced".to_vec()));
        assert_eq!(kv.usage(&pid("a")).ok(), Some(2 + 11));
    }

    #[test]
    fn concurrent_writers_all_land_and_quota_stays_exact() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("kv.redb");
        let kv = KvStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        const WRITERS: usize = 32;
        const SETS: usize = 20;
        // Principal "shared" may hold 100 entries of 1 + 8 + 91 bytes; every writer tries 20.
        let quota = 100 * 100;
        let barrier = std::sync::Barrier::new(WRITERS);
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (kv, barrier, accepted) = (&kv, &barrier, &accepted);
                s.spawn(move || {
                    let own = Namespace::new(&pid(&format!("p{w}")), "c");
                    let shared = Namespace::new(&pid("shared"), "c");
                    barrier.wait();
                    for i in 0..SETS {
                        kv.set(&own, &format!("key{i:04}"), &[w as u8; 50], 1 << 20)
                            .unwrap_or_else(|e| panic!("{e}"));
                        match kv.set(&shared, &format!("k{w:03}-{i:04}"), &[0; 91], quota) {
                            Ok(()) => {
                                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(KvError::Quota { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                });
            }
        });
        assert_eq!(
            accepted.into_inner(),
            100,
            "exactly the quota's worth was accepted"
        );
        assert!(kv.write_commits() <= (2 * WRITERS * SETS) as u64);
        drop(kv);
        let kv = KvStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kv.usage(&pid("shared")).ok(), Some(100 * 100));
        let shared = Namespace::new(&pid("shared"), "c");
        assert_eq!(kv.list_keys(&shared, "").map(|k| k.len()).ok(), Some(100));
        for w in 0..WRITERS {
            let own = Namespace::new(&pid(&format!("p{w}")), "c");
            for i in 0..SETS {
                assert_eq!(
                    kv.get(&own, &format!("key{i:04}")).ok().flatten(),
                    Some(vec![w as u8; 50])
                );
            }
            assert_eq!(
                kv.usage(&pid(&format!("p{w}"))).ok(),
                Some((SETS * 57) as u64)
            );
        }
    }

    fn lone(ticket: Ticket) -> Lone {
        match ticket {
            Ticket::Lone(lone) => lone,
            Ticket::Queued(_) => panic!("queued although nothing was in flight"),
        }
    }

    fn queued(ticket: Ticket) -> Pending {
        match ticket {
            Ticket::Queued(pending) => pending,
            Ticket::Lone(_) => panic!("a second lone write while one was in flight"),
        }
    }

    /// Blocks the test thread until `pending` is answered.
    fn block_on(pending: Pending) -> Outcome {
        use std::future::Future;
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut outcome = std::pin::pin!(pending.outcome());
        loop {
            if let Poll::Ready(answer) = outcome.as_mut().poll(&mut cx) {
                return answer;
            }
            std::thread::park();
        }
    }

    #[test]
    fn stats_count_every_grouped_write_and_a_group_short_of_its_writers_still_commits() {
        let (_d, kv) = store();
        let ns = Namespace::new(&pid("a"), "c");
        // A lone write in flight sends every later write to the committer.
        let held = lone(
            kv.queue_set(&ns, "held", b"h".to_vec(), 1 << 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let crowd: Vec<Pending> = (0..4)
            .map(|i| {
                queued(
                    kv.queue_set(&ns, &format!("k{i}"), b"v".to_vec(), 1 << 20)
                        .unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect();
        for p in crowd {
            block_on(p).unwrap_or_else(|e| panic!("{e}"));
        }
        // Fewer writers come back than the last group held: the committer waits a bounded
        // time for the rest, then commits the one it has.
        let straggler = queued(
            kv.queue_set(&ns, "late", b"v".to_vec(), 1 << 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        block_on(straggler).unwrap_or_else(|e| panic!("{e}"));
        held.commit().unwrap_or_else(|e| panic!("{e}"));
        let stats = kv.commit_stats();
        assert_eq!(stats.grouped_writes, 5);
        assert!((2..=5).contains(&stats.group_commits), "{stats:?}");
        assert_eq!(stats.commits, stats.group_commits + 1, "{stats:?}");
        assert!(stats.group_commit_ns > 0);
        assert_eq!(get(&kv, "a", "late"), Some(b"v".to_vec()));
    }

    #[test]
    fn a_lone_write_commits_in_place_and_writes_meanwhile_are_grouped() {
        use futures::FutureExt;
        let (_d, kv) = store();
        let ns = Namespace::new(&pid("a"), "c");
        let first = lone(
            kv.queue_set(&ns, "k1", b"one".to_vec(), 1 << 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        // While the lone write is in flight, others go to the committer, which does not wait
        // for it: a blocking set behind it completes, and so does the queued write before it.
        let second = queued(
            kv.queue_set(&ns, "k2", b"two".to_vec(), 1 << 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        kv.set(&ns, "k3", b"three", 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let outcome = second.outcome().now_or_never();
        assert!(
            matches!(outcome, Some(Ok(()))),
            "answered in FIFO order: {outcome:?}"
        );
        assert_eq!(
            get(&kv, "a", "k1"),
            None,
            "the lone write is not committed yet"
        );
        let grouped = kv.write_commits();
        first.commit().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kv.write_commits(), grouped + 1, "its own transaction");
        assert_eq!(get(&kv, "a", "k1"), Some(b"one".to_vec()));
        assert_eq!(kv.usage(&pid("a")).ok(), Some(5 + 5 + 7));

        // Nothing in flight again: the next write is lone, and one dropped uncommitted stores
        // nothing and frees the path for the next.
        let dropped = lone(
            kv.queue_set(&ns, "gone", b"x".to_vec(), 1 << 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        drop(dropped);
        assert_eq!(get(&kv, "a", "gone"), None);
        let refused = lone(
            kv.queue_cas(&ns, "k1", Some(b"wrong".to_vec()), b"y".to_vec(), 1 << 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(matches!(refused.commit(), Err(KvError::CasMismatch)));
        let over = lone(
            kv.queue_set(&ns, "big", vec![0; 100], 20)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(matches!(over.commit(), Err(KvError::Quota { .. })));
        assert_eq!(
            kv.usage(&pid("a")).ok(),
            Some(17),
            "refused lone writes charge nothing"
        );
        lone(kv.queue_delete(&ns, "k2").unwrap_or_else(|e| panic!("{e}")))
            .commit()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kv.usage(&pid("a")).ok(), Some(12));
    }
}
