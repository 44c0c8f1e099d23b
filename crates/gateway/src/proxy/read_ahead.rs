//! One socket read per large message instead of one per tungstenite read buffer.
//!
//! tungstenite never asks its stream for more than its `read_buffer_size`, so with a small
//! buffer (`invocation::READ_BUFFER`, 1 KiB) a 64 KiB message would cost 64 `read` calls per
//! leg. A large buffer costs more than it saves: tungstenite zero-fills whatever it asks for
//! before each read, even for a 64-byte message, and keeps that buffer resident for the
//! connection's lifetime. [`ReadAhead`] sits below it instead and reads in two modes:
//!
//! - **direct** (the start, and while messages are small): the codec's own read goes straight
//!   to the socket; nothing is copied and nothing is held.
//! - **ahead** (once a read filled everything the codec asked for, i.e. more was probably
//!   waiting): one large read into a buffer of our own, from which the codec's next reads are
//!   served by copying. As soon as a read returns less than the codec asked for (the sender
//!   paused), the buffer is dropped once drained and reads go direct again, so a connection
//!   that only exchanges small messages never holds read-ahead memory.
//!
//! Measured: with an 8 KiB codec buffer, `recvfrom` calls per 64 KiB message and leg fell
//! from 9 to 1, at about the same CPU (the copy out of this buffer costs what the saved calls
//! did); what it buys is that the codec buffer can shrink to 1 KiB without 64 reads per
//! message (scfsim's RSS per open connection 55.3 → 45.2 KiB in `scfsim-bench hold -n 300`).
//!
//! Writes pass through untouched. The buffer holds at most [`AHEAD`] bytes the codec has not
//! seen yet, so back-pressure toward a fast sender (`rate_limit_action = "throttle"` included)
//! starts at most that much later.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read-ahead size: a 64 KiB message with its frame header in one read, and the limit's
/// 256 KB messages in four.
pub(crate) const AHEAD: usize = 64 * 1024 + 1024;

/// See the module documentation.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Empty (no allocation) in direct mode; `AHEAD` bytes while reading ahead.
    buf: Vec<u8>,
    /// `buf[start..end]` has been read from the socket and not yet handed to the codec.
    start: usize,
    end: usize,
    /// The last socket read filled what the codec asked for: read ahead next time.
    ahead: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            ahead: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read ahead and still held (tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            let wanted = out.remaining();
            if !this.ahead || wanted == 0 {
                let before = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                this.ahead = wanted > 0 && out.filled().len() - before == wanted;
                return Poll::Ready(Ok(()));
            }
            if this.buf.is_empty() {
                this.buf = vec![0; AHEAD];
            }
            let mut ahead = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
            let read = ahead.filled().len();
            this.start = 0;
            this.end = read;
            // Less than the codec itself asked for: the sender has paused; go direct again.
            this.ahead = read >= wanted;
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        if this.start == this.end && !this.ahead {
            this.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the codec does: reads of at most 8 KiB.
    async fn read_exact_in_small_reads<S: AsyncRead + Unpin>(s: &mut S, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 8 * 1024];
        while got.len() < len {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "stream ended after {} of {len} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn large_messages_come_through_whole_and_small_ones_release_the_buffer() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut rx = ReadAhead::new(rx);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&big).await.unwrap();
        assert_eq!(read_exact_in_small_reads(&mut rx, big.len()).await, big);
        assert!(rx.held() > 0, "a large message was read ahead");

        // The sender pauses after a small message: nothing is held any more.
        tx.write_all(b"small").await.unwrap();
        assert_eq!(read_exact_in_small_reads(&mut rx, 5).await, b"small");
        assert_eq!(rx.held(), 0);

        // And a large one after that is read ahead again, in order.
        tx.write_all(&big).await.unwrap();
        tx.write_all(b"end").await.unwrap();
        let mut want = big.clone();
        want.extend_from_slice(b"end");
        assert_eq!(read_exact_in_small_reads(&mut rx, want.len()).await, want);

        drop(tx);
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(rx.held(), 0, "the end of the stream releases the buffer");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = ReadAhead::new(a);
        a.write_all(b"hello").await.unwrap();
        a.flush().await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
