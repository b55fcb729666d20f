//! Reading and writing frames on async byte streams (e.g. quinn streams).

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
