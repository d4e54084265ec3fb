//! `Pipe`: a bounded byte queue between a host task and a guest handle, with readiness on
//! both sides. The producer waits while the queue holds its capacity, so a slow guest slows
//! the network instead of growing host memory; the consumer sees data, the end, or a failure,
//! never a partial state. Either side closing wakes the other at once.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::host::poll::ReadySignal;

/// How a pipe ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every byte was delivered.
    Done,
    /// The producer failed; the text is for the guest's diagnostics (no host detail).
    Failed(String),
}

/// What a non-waiting read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Up to the requested number of bytes.
    Data(Bytes),
    /// Nothing yet; the producer has not ended.
    Empty,
    /// Nothing left, and this is how the pipe ended.
    End(End),
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    queued: usize,
    end: Option<End>,
    reader_gone: bool,
}

/// A bounded byte queue with readiness (see the module docs).
#[derive(Debug)]
pub(crate) struct Pipe {
    state: Mutex<State>,
    /// Woken when data or the end arrives.
    readable: Notify,
    /// Woken when room appears or the reader leaves.
    writable: Notify,
    capacity: usize,
}

impl Pipe {
    /// An empty pipe holding at most `capacity` bytes before its producer waits.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            readable: Notify::new(),
            writable: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    /// Queues `bytes`, waiting for room; `false` if the reader is gone (stop producing).
    pub(crate) async fn push(&self, bytes: Bytes) -> bool {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock();
                if s.reader_gone || s.end.is_some() {
                    return false;
                }
                if s.queued < self.capacity {
                    s.queued += bytes.len();
                    if !bytes.is_empty() {
                        s.queue.push_back(bytes);
                    }
                    drop(s);
                    self.readable.notify_waiters();
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Bytes the producer may queue now without waiting; `None` once the reader has gone
    /// or the pipe has ended.
    pub(crate) fn room(&self) -> Option<usize> {
        let s = self.state.lock();
        if s.reader_gone || s.end.is_some() {
            return None;
        }
        Some(self.capacity.saturating_sub(s.queued))
    }

    /// Queues `bytes` without waiting, whatever the room (callers check [`Pipe::room`]
    /// first); `false` once the reader has gone or the pipe has ended.
    pub(crate) fn try_push(&self, bytes: Bytes) -> bool {
        {
            let mut s = self.state.lock();
            if s.reader_gone || s.end.is_some() {
                return false;
            }
            s.queued += bytes.len();
            if !bytes.is_empty() {
                s.queue.push_back(bytes);
            }
        }
        self.readable.notify_waiters();
        true
    }

    /// Waits until the producer may queue something, or never will.
    pub(crate) async fn writable(&self) {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.room().is_none_or(|room| room > 0) {
                return;
            }
            notified.await;
        }
    }

    /// Ends the pipe (the first end wins); queued bytes stay readable.
    pub(crate) fn finish(&self, end: End) {
        {
            let mut s = self.state.lock();
            if s.end.is_none() {
                s.end = Some(end);
            }
        }
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }

    /// Whether the reader has gone (the producer should stop).
    pub(crate) fn reader_gone(&self) -> bool {
        self.state.lock().reader_gone
    }

    /// Waits until the reader has gone.
    pub(crate) async fn reader_left(&self) {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.reader_gone() {
                return;
            }
            notified.await;
        }
    }

    /// Takes up to `max` queued bytes without waiting.
    pub(crate) fn try_read(&self, max: usize) -> Read {
        let mut s = self.state.lock();
        let Some(front) = s.queue.front_mut() else {
            return match &s.end {
                Some(end) => Read::End(end.clone()),
                None => Read::Empty,
            };
        };
        let out = if front.len() <= max {
            s.queue.pop_front().unwrap_or_default()
        } else {
            front.split_to(max)
        };
        s.queued = s.queued.saturating_sub(out.len());
        drop(s);
        self.writable.notify_waiters();
        Read::Data(out)
    }

    /// Whether a read would return without waiting (data, or the end).
    pub(crate) fn is_readable(&self) -> bool {
        let s = self.state.lock();
        !s.queue.is_empty() || s.end.is_some()
    }

    /// Waits until a read would return without waiting.
    pub(crate) async fn readable(&self) {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_readable() {
                return;
            }
            notified.await;
        }
    }

    /// The reader leaves: queued bytes are dropped and the producer is told to stop.
    pub(crate) fn close_reader(&self) {
        {
            let mut s = self.state.lock();
            s.reader_gone = true;
            s.queue.clear();
            s.queued = 0;
        }
        self.writable.notify_waiters();
        self.readable.notify_waiters();
    }
}

/// A pipe's write side as a pollable source.
#[derive(Debug)]
pub(crate) struct Writable(pub(crate) Arc<Pipe>);

impl ReadySignal for Writable {
    fn is_ready(&self) -> bool {
        self.0.room().is_none_or(|room| room > 0)
    }

    fn wait(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.0.writable().await })
    }
}

/// A pipe's read side as a pollable source.
#[derive(Debug)]
pub(crate) struct Readable(pub(crate) Arc<Pipe>);

impl ReadySignal for Readable {
    fn is_ready(&self) -> bool {
        self.0.is_readable()
    }

    fn wait(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.0.readable().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_cut_to_the_reader_s_size_then_the_end() {
        let pipe = Pipe::new(16);
        assert_eq!(pipe.try_read(4), Read::Empty);
        assert!(!pipe.is_readable());
        assert!(pipe.push(Bytes::from_static(b"hello world")).await);
        assert_eq!(pipe.try_read(5), Read::Data(Bytes::from_static(b"hello")));
        assert_eq!(pipe.try_read(64), Read::Data(Bytes::from_static(b" world")));
        pipe.finish(End::Failed("broken".into()));
        pipe.finish(End::Done);
        assert_eq!(pipe.try_read(1), Read::End(End::Failed("broken".into())));
    }

    #[tokio::test]
    async fn a_full_pipe_holds_its_producer_until_the_reader_takes_or_leaves() {
        let pipe = Pipe::new(4);
        assert!(pipe.push(Bytes::from_static(b"1234")).await);
        let producer = {
            let pipe = Arc::clone(&pipe);
            tokio::spawn(async move { pipe.push(Bytes::from_static(b"5678")).await })
        };
        tokio::task::yield_now().await;
        assert!(!producer.is_finished());
        assert_eq!(pipe.try_read(4), Read::Data(Bytes::from_static(b"1234")));
        assert!(producer.await.unwrap_or_else(|e| panic!("{e}")));
        let blocked = {
            let pipe = Arc::clone(&pipe);
            tokio::spawn(async move { pipe.push(Bytes::from_static(b"9")).await })
        };
        pipe.close_reader();
        assert!(!blocked.await.unwrap_or_else(|e| panic!("{e}")));
        assert!(pipe.reader_gone());
    }
}
