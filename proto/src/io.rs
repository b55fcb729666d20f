//! Reading and writing frames on async byte streams (e.g. quinn streams).

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream: {0}")]
    Stream(#[from] std::io::Error),
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub async fn read<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, IoError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated.into())
            };
        }
        got += n;
    }
    let len = frame::body_len(header, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            IoError::Frame(FrameError::Truncated)
        } else {
            IoError::Stream(e)
        }
    })?;
    Ok(Some(frame::decode(&body)?))
}

/// Writes one message.
pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> Result<(), IoError> {
    let bytes = frame::encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Writes one message, encoded before the returned future first runs: the future holds only
/// the bytes, not `msg`, which keeps the state of long-lived tasks that write many kinds of
/// messages small (a task's future is as large as the largest value it holds across an
/// `.await`).
pub fn write_encoded<'a, T: Serialize, W: AsyncWrite + Unpin>(
    w: &'a mut W,
    msg: T,
) -> impl Future<Output = Result<(), IoError>> + 'a {
    let bytes = frame::encode(&msg);
    drop(msg);
    async move {
        w.write_all(&bytes?).await?;
        Ok(())
    }
}

/// Reads frames one after another and keeps a partly read frame between calls, so
/// [`FrameReader::next`] is cancel-safe on a stream whose `read` is (quinn's and tokio's
/// are): a `select!` may drop it mid-frame without losing bytes. This spares a task and a
/// channel per long-lived stream.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    buf: Vec<u8>,
    filled: usize,
}

/// A buffer above this is given back after its frame (rare large frames don't pin memory
/// for the life of a session).
const KEEP_CAPACITY: usize = 4 << 10;

impl FrameReader {
    /// Frames longer than `max` bytes are refused.
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            max,
            buf: Vec::new(),
            filled: 0,
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream (between frames).
    pub async fn next<T: DeserializeOwned, R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<T>, IoError> {
        loop {
            let want = if self.filled < 4 {
                4
            } else {
                let header = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
                let want = 4 + frame::body_len(header, self.max)?;
                if self.filled == want {
                    // A whole frame (its body may be empty, which no message decodes from).
                    let decoded = frame::decode(&self.buf[4..want]);
                    self.filled = 0;
                    if self.buf.capacity() > KEEP_CAPACITY {
                        self.buf = Vec::new();
                    }
                    return Ok(Some(decoded?));
                }
                want
            };
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            // Cancel-safe: `read` takes bytes only when it completes, and they are counted
            // in the same poll.
            let n = r.read(&mut self.buf[self.filled..want]).await?;
            if n == 0 {
                return if self.filled == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated.into())
                };
            }
            self.filled += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reader_cancelled_mid_frame_loses_no_bytes() {
        let msgs: Vec<String> = (0..20).map(|i| "x".repeat(i * 37)).collect();
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(frame::encode(m).unwrap());
        }
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Dribbled 16 bytes a millisecond, so frames arrive across many reads.
            for chunk in bytes.chunks(16) {
                tx.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut reader = FrameReader::new(1 << 16);
        let (mut got, mut cancelled) = (Vec::new(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < msgs.len() && tokio::time::Instant::now() < deadline {
            // Every read is given at most 2 ms, far less than a frame takes to arrive.
            tokio::select! {
                m = reader.next::<String, _>(&mut rx) => got.push(m.unwrap().unwrap()),
                () = tokio::time::sleep(Duration::from_millis(2)) => cancelled += 1,
            }
        }
        writer.abort();
        assert!(
            cancelled > 0,
            "no read was cancelled, so the test shows nothing"
        );
        assert_eq!(got, msgs);
        let _ = writer.await;
        assert!(reader.next::<String, _>(&mut rx).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_reader_names_a_truncated_or_oversized_frame() {
        let frame = frame::encode(&"hello".to_string()).unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tx.write_all(&frame[..frame.len() - 1]).await.unwrap();
        drop(tx);
        let e = FrameReader::new(1024)
            .next::<String, _>(&mut rx)
            .await
            .unwrap_err();
        assert!(matches!(e, IoError::Frame(FrameError::Truncated)), "{e}");

        // A frame with an empty body is a bad message, not a truncated stream.
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tx.write_all(&[0, 0, 0, 0]).await.unwrap();
        drop(tx);
        let e = FrameReader::new(1024)
            .next::<String, _>(&mut rx)
            .await
            .unwrap_err();
        assert!(
            matches!(e, IoError::Frame(FrameError::BadMessage(_))),
            "{e}"
        );

        let big = frame::encode(&"y".repeat(2000)).unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        tx.write_all(&big).await.unwrap();
        let e = FrameReader::new(1024)
            .next::<String, _>(&mut rx)
            .await
            .unwrap_err();
        assert!(matches!(e, IoError::Frame(_)), "{e}");
    }

    #[tokio::test]
    async fn write_encoded_writes_what_read_reads() {
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        write_encoded(&mut tx, vec![1u32, 2, 3]).await.unwrap();
        let got: Option<Vec<u32>> = read(&mut rx, 1024).await.unwrap();
        assert_eq!(got, Some(vec![1, 2, 3]));
    }
}
