//! The bytes kept of one output stream: a bounded ring addressed by absolute positions, so a
//! cursor tells exactly how much was lost before it and a reader can never be handed bytes
//! from the future; `drop-oldest` discards read bytes before unread ones and counts the rest.

use std::collections::VecDeque;

use super::super::ProcessError;

/// The output of one stream as the host keeps it: `buf` holds bytes `[base, base + len)` of
/// everything the child wrote; `read_at` is how far the guest has read.
#[derive(Debug)]
pub(super) struct Ring {
    pub(super) buf: VecDeque<u8>,
    pub(super) base: u64,
    pub(super) read_at: u64,
    pub(super) cap: usize,
    pub(super) dropped: u64,
    pub(super) eof: bool,
    /// Set once the leader exited: a backpressured reader drains what is left.
    pub(super) released: bool,
}

impl Ring {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            base: 0,
            read_at: 0,
            cap,
            dropped: 0,
            eof: false,
            released: false,
        }
    }

    pub(super) fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    pub(super) fn unread(&self) -> usize {
        usize::try_from(self.end() - self.read_at).unwrap_or(usize::MAX)
    }

    /// Appends `data`, keeping at most `cap` bytes: read bytes go first, then the oldest
    /// unread ones (counted as dropped).
    pub(super) fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        if self.buf.len() <= self.cap {
            return;
        }
        // The front holds the read bytes first, so they go before any unread one.
        let n = self.buf.len() - self.cap;
        self.buf.drain(..n);
        self.base += n as u64;
        if self.read_at < self.base {
            self.dropped += self.base - self.read_at;
            self.read_at = self.base;
        }
    }

    /// Everything unread, marking it read.
    pub(super) fn take_unread(&mut self) -> Vec<u8> {
        let start = usize::try_from(self.read_at - self.base).unwrap_or(0);
        let out: Vec<u8> = self.buf.range(start..).copied().collect();
        self.read_at = self.end();
        out
    }

    /// Up to `max` bytes from absolute position `from` (`None`: the oldest kept), the next
    /// position, the bytes lost before it and whether the stream ended there.
    pub(super) fn read_from(
        &mut self,
        from: Option<u64>,
        max: usize,
    ) -> Result<Chunk, ProcessError> {
        let from = from.unwrap_or(self.base);
        if from > self.end() {
            return Err(ProcessError::Invalid(
                "the cursor is beyond the output".into(),
            ));
        }
        let (start, lost) = if from < self.base {
            (self.base, self.base - from)
        } else {
            (from, 0)
        };
        let offset = usize::try_from(start - self.base).unwrap_or(0);
        let data: Vec<u8> = self.buf.range(offset..).take(max).copied().collect();
        let next = start + data.len() as u64;
        self.read_at = self.read_at.max(next);
        Ok(Chunk {
            data,
            next,
            lost,
            eof: self.eof && next == self.end(),
        })
    }
}

/// A piece of one stream.
pub(crate) struct Chunk {
    pub(crate) data: Vec<u8>,
    pub(crate) next: u64,
    pub(crate) lost: u64,
    pub(crate) eof: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_bytes_and_counts_the_rest() {
        let mut r = Ring::new(4);
        r.push(b"abcdef");
        assert_eq!(r.dropped, 2);
        assert_eq!(r.take_unread(), b"cdef");
        r.push(b"gh");
        assert_eq!(
            r.dropped, 2,
            "read bytes make room before unread ones are lost"
        );
        assert_eq!(r.take_unread(), b"gh");
    }

    #[test]
    fn cursors_report_what_was_lost_and_refuse_the_future() {
        let mut r = Ring::new(4);
        r.push(b"abcdef");
        let c = r.read_from(Some(0), 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.data.as_slice(), c.next, c.lost), (&b"cde"[..], 5, 2));
        let c = r
            .read_from(Some(c.next), 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.data.as_slice(), c.next, c.eof), (&b"f"[..], 6, false));
        assert!(r.read_from(Some(7), 1).is_err());
        r.eof = true;
        assert!(
            r.read_from(Some(6), 1)
                .unwrap_or_else(|e| panic!("{e}"))
                .eof
        );
    }
}
