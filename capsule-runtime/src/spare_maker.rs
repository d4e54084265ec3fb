//! The spare maker: one OS thread per process that instantiates spares and drops displaced
//! instances for every capsule, so that work never waits for a runtime task a caller's
//! back-to-back calls could starve. It holds no capsule alive (a request names its capsule by
//! a weak reference), makes at most one spare per request, counts itself in as a helper of the
//! capsule while it touches any of its Stores (so an unload waits for it and no pool slot
//! outlives the load), and has at most one request queued per capsule plus a bounded number of
//! instances to drop (see [`crate::spares`]).

use std::sync::mpsc::{Sender, channel};
use std::sync::{OnceLock, Weak};

use tokio::runtime::Handle;

use crate::capsule::CapsuleInner;
use crate::spares::{Discard, Made};

/// One piece of work for the maker thread.
pub(crate) enum Work {
    /// Make one spare for the capsule, if it is still loaded; the runtime handle is the one
    /// the request came from, entered while instantiating (host state may need it).
    Refill(Weak<CapsuleInner>, Handle),
    /// Drop an instance off the call path; it keeps the capsule's unload waiting until the
    /// instance (and its pool slot) is gone.
    Discard(Box<Discard>),
}

/// The maker thread's queue; `None` when the thread could not be started (the work is then
/// done, or left undone, by the caller).
fn maker() -> Option<&'static Sender<Work>> {
    static MAKER: OnceLock<Option<Sender<Work>>> = OnceLock::new();
    MAKER
        .get_or_init(|| {
            let (tx, rx) = channel::<Work>();
            let started = std::thread::Builder::new()
                .name("capsule-spares".into())
                .spawn(move || {
                    while let Ok(work) = rx.recv() {
                        run(work);
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the spare maker thread; spares are off");
                    None
                }
            }
        })
        .as_ref()
}

/// Hands `work` to the maker thread; gives it back when there is no thread.
pub(crate) fn send(work: Work) -> Result<(), Work> {
    match maker() {
        Some(tx) => tx.send(work).map_err(|e| e.0),
        None => Err(work),
    }
}

fn run(work: Work) {
    match work {
        Work::Discard(discard) => drop(discard),
        Work::Refill(capsule, handle) => {
            let Some(inner) = capsule.upgrade() else {
                return;
            };
            // Closed (unloading): no spare, and nothing to count in.
            let Some(guard) = inner.calls.helper() else {
                drop(inner.instances.made(Made::Skipped));
                return;
            };
            crate::spares::list_holder(&capsule, &inner);
            let made = match handle.block_on(inner.instantiate_spare()) {
                Some(spare) => Made::Spare(spare),
                None => Made::Failed,
            };
            let (again, unused) = inner.instances.made(made);
            let _entered = handle.enter();
            drop(unused);
            if again {
                // Queued behind every other capsule's request, so one capsule's refills never
                // keep the thread from another's.
                let requeued = send(Work::Refill(Weak::clone(&capsule), handle.clone()));
                if requeued.is_err() {
                    drop(inner.instances.made(Made::Skipped));
                }
            }
            // Nothing of the capsule is held any more when the guard counts the maker out.
            drop(inner);
            drop(guard);
        }
    }
}
