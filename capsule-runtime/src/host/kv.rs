//! `astrid:kv/host@1.0.0`: every call works in the namespace of the principal in scope
//! (`<principal>:capsule:<capsule>`) under that principal's storage quota, which its files
//! share; a get is one short read transaction run in place; a set, CAS or delete is checked in
//! place and, when no other write is in flight, committed on the blocking pool like any
//! blocking call (a lone writer pays no extra hand-off); otherwise it is queued for the
//! store's group commit and the call awaits that durable commit without holding a blocking
//! worker (so concurrent writers share one commit); listings and clears run on the blocking
//! pool. `KvError` maps to the WIT error code by one
//! exhaustive match; a database failure reaches the guest without the backend's text, which
//! goes to the host log.

use std::sync::Arc;

use capsule_vfs::Ctl;
use capsule_wit::astrid::kv::host::{ErrorCode, Host, KeyPage};

use crate::error::LoadError;
use crate::host::{Assembly, Capability, InstanceCx, View};
use capsule_store::{KvError, KvStore, Namespace, Ticket};

/// The `astrid:kv` capability: the runtime's one KV database, namespaced per call.
pub(crate) struct KvHost;

/// The view `astrid:kv` is implemented on.
type KvView<'a> = View<'a, Arc<KvStore>>;

runs_on_view!(KvHost);

impl Capability for KvHost {
    const INTERFACES: &'static [&'static str] = &["astrid:kv/host@1.0.0"];
    type Shared = Arc<KvStore>;
    type Ctx = Arc<KvStore>;

    link_bindings!(capsule_wit::astrid::kv::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        Ok(Arc::clone(&cx.services.kv))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

/// What a guest acting for a refused principal is told; the reason goes to the host log.
pub(crate) const REFUSED: &str = "the principal in scope may not use storage";

fn code(e: &KvError) -> ErrorCode {
    match e {
        KvError::InvalidKey(_) => ErrorCode::InvalidKey,
        KvError::TooLarge { .. } => ErrorCode::TooLarge,
        KvError::Quota { .. } | KvError::Unaccounted(_) => ErrorCode::Quota,
        KvError::CasMismatch => ErrorCode::CasMismatch,
        KvError::Storage(_) => {
            ErrorCode::Unknown("storage failure (details are in the host log)".into())
        }
    }
}

/// What a KV operation may store: the principal's quota less what its files take, computed
/// only by the operations that write.
type Room<'a> = &'a dyn Fn() -> Result<u64, KvError>;

impl KvView<'_> {
    /// The principal's storage quota, or the code a refused principal's guest is told.
    fn quota(&self) -> Result<u64, ErrorCode> {
        let scoped = self.core.scoped;
        scoped
            .profile()
            .as_ref()
            .map(|p| p.quotas.max_storage_bytes)
            .map_err(|reason| {
                // Why (a disabled principal, or a profile the host cannot read, named by its
                // host path) is the operator's business: the guest learns only that it may not.
                tracing::warn!(
                    capsule = %scoped.identity.name,
                    principal = %scoped.principal(),
                    %reason,
                    "KV call refused"
                );
                ErrorCode::Unknown(REFUSED.into())
            })
    }

    /// The code for a failed operation, logged when the host is at fault.
    fn failed(&self, e: &KvError) -> ErrorCode {
        if matches!(e, KvError::Storage(_) | KvError::Unaccounted(_)) {
            let capsule = &self.core.scoped.identity.name;
            tracing::warn!(%capsule, error = %e, "KV call failed");
        }
        code(e)
    }

    /// Runs `op` against the scoped namespace on the blocking pool.
    async fn run<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&KvStore, &Namespace, Room<'_>) -> Result<T, KvError> + Send + 'static,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        let quota = match self.quota() {
            Ok(quota) => quota,
            Err(code) => return Ok(Err(code)),
        };
        let scoped = self.core.scoped;
        let principal = scoped.principal().clone();
        let ns = Namespace::new(&principal, &scoped.identity.name);
        let store = Arc::clone(self.ctx);
        let cancel = self.core.limits.shared.cancel.clone();
        let work = move || {
            let cancelled = move || cancel.is_cancelled();
            let room = || {
                let files = store.file_usage(&principal, &Ctl::new(&cancelled))?;
                Ok(quota.saturating_sub(files))
            };
            op(&store, &ns, &room)
        };
        match self.core.limits.blocking(work).await? {
            None => Ok(Err(ErrorCode::Unknown("the capsule is unloading".into()))),
            Some(Err(panic)) => Err(wasmtime::Error::msg(format!("KV worker failed: {panic}"))),
            Some(Ok(result)) => Ok(result.map_err(|e| self.failed(&e))),
        }
    }

    /// Checks a write through `queue` (given the principal's room, when `needs_room`) and
    /// awaits its durable commit: its own, on the blocking pool, when it is the only write in
    /// flight, else the group's. The room comes from the file ledger in place once the
    /// principal's home was measured, and from the blocking pool (which measures it) before.
    async fn write(
        &mut self,
        needs_room: bool,
        queue: impl FnOnce(&KvStore, &Namespace, u64) -> Result<Ticket, KvError>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let quota = match self.quota() {
            Ok(quota) => quota,
            Err(code) => return Ok(Err(code)),
        };
        let scoped = self.core.scoped;
        let ns = Namespace::new(scoped.principal(), &scoped.identity.name);
        let room = if !needs_room {
            0
        } else if let Some(files) = self.ctx.measured_file_usage(scoped.principal()) {
            quota.saturating_sub(files)
        } else {
            match self.run(|_, _, room| room()).await? {
                Ok(room) => room,
                Err(code) => return Ok(Err(code)),
            }
        };
        let pending = match queue(self.ctx, &ns, room) {
            Ok(Ticket::Queued(pending)) => pending,
            Ok(Ticket::Lone(lone)) => {
                // Dropped uncommitted if the capsule unloads (or the call's deadline passes) before a
                // worker is free.
                return match self.core.limits.blocking(move || lone.commit()).await? {
                    None => Ok(Err(ErrorCode::Unknown("the capsule is unloading".into()))),
                    Some(Err(panic)) => {
                        Err(wasmtime::Error::msg(format!("KV worker failed: {panic}")))
                    }
                    Some(Ok(outcome)) => Ok(outcome.map_err(|e| self.failed(&e))),
                };
            }
            Err(e) => return Ok(Err(self.failed(&e))),
        };
        match self.core.limits.race(pending.outcome()).await? {
            None => Ok(Err(ErrorCode::Unknown("the capsule is unloading".into()))),
            Some(outcome) => Ok(outcome.map_err(|e| self.failed(&e))),
        }
    }
}

impl Host for KvView<'_> {
    async fn kv_get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, ErrorCode>> {
        // One read transaction on a B-tree the OS keeps cached: microseconds, so it runs here
        // rather than paying a hand-off to the blocking pool and back.
        if let Err(code) = self.quota() {
            return Ok(Err(code));
        }
        let scoped = self.core.scoped;
        let ns = Namespace::new(scoped.principal(), &scoped.identity.name);
        Ok(self.ctx.get(&ns, &key).map_err(|e| self.failed(&e)))
    }

    async fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.write(true, move |s, ns, room| s.queue_set(ns, &key, value, room))
            .await
    }

    async fn kv_delete(&mut self, key: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.write(false, move |s, ns, _| s.queue_delete(ns, &key))
            .await
    }

    async fn kv_list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, ErrorCode>> {
        self.run(move |s, ns, _| s.list_keys(ns, &prefix)).await
    }

    async fn kv_list_keys_page(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<KeyPage, ErrorCode>> {
        self.run(move |s, ns, _| {
            s.list_page(ns, &prefix, cursor.as_deref(), limit)
                .map(|(keys, next_cursor)| KeyPage { keys, next_cursor })
        })
        .await
    }

    async fn kv_clear_prefix(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<u64, ErrorCode>> {
        self.run(move |s, ns, _| s.clear_prefix(ns, &prefix)).await
    }

    async fn kv_cas(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.write(true, move |s, ns, room| {
            s.queue_cas(ns, &key, expected, new, room)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_text_never_reaches_the_guest() {
        let e = KvError::Storage("redb: I/O error on /var/lib/capsules/kv.redb".into());
        match code(&e) {
            ErrorCode::Unknown(text) => {
                assert!(!text.contains("redb") && !text.contains('/'), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            code(&KvError::Unaccounted("home unmeasurable".into())),
            ErrorCode::Quota
        ));
    }
}
