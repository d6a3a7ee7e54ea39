//! Frames over any byte stream (`AsyncRead`/`AsyncWrite`), so TLS can wrap
//! the TCP stream later without touching the link logic.
//!
//! The reader holds at most one frame of `max_frame` bytes plus one read's
//! worth, refuses an oversized frame from its length prefix, and treats a
//! stream that ends inside a frame as an error: garbage or hostile input
//! closes the link, it never panics or allocates without bound.

use crate::protocol::twin::{decode, encode, Frame, FrameError};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why the link cannot go on reading or writing.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("connection closed by the twin")]
    Closed,
    #[error("connection closed in the middle of a frame ({0} bytes pending)")]
    Truncated(usize),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads whole frames.
pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R, max_frame: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(64 << 10),
            max_frame,
        }
    }

    /// The next frame. Cancel-safe: bytes read so far stay buffered.
    pub async fn read(&mut self) -> Result<Frame, IoError> {
        loop {
            if let Some(f) = decode(&mut self.buf, self.max_frame)? {
                return Ok(f);
            }
            // Never read more than the rest of one maximal frame ahead.
            if self.buf.capacity() - self.buf.len() < 8 << 10 {
                self.buf.reserve(64 << 10);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    IoError::Closed
                } else {
                    IoError::Truncated(self.buf.len())
                });
            }
        }
    }
}

/// Writes frames; callers build them into [`FrameWriter::buf`] (e.g. with
/// [`crate::protocol::twin::BatchWriter`]) and flush once per batch.
pub struct FrameWriter<W> {
    wr: W,
    pub buf: BytesMut,
}

impl<W> FrameWriter<W> {
    pub fn new(wr: W) -> Self {
        FrameWriter {
            wr,
            buf: BytesMut::with_capacity(64 << 10),
        }
    }

    /// Queue `f` behind what is buffered.
    pub fn push(&mut self, f: &Frame) {
        encode(f, &mut self.buf);
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Write everything buffered; returns the bytes written.
    pub async fn flush(&mut self) -> Result<usize, IoError> {
        let n = self.buf.len();
        if n > 0 {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
            // Keep a burst's buffer from staying allocated forever.
            if self.buf.capacity() > 8 << 20 {
                self.buf = BytesMut::with_capacity(64 << 10);
            }
        }
        self.wr.flush().await?;
        Ok(n)
    }

    /// Write one frame now.
    pub async fn send(&mut self, f: &Frame) -> Result<usize, IoError> {
        self.push(f);
        self.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}
