//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! The decoder is fed bytes as they arrive and yields whole frames. It checks the length
//! before buffering the body, so it never holds more than [`MAX_FRAME`] (or the limit it was
//! built with) plus the 4-byte header, and it never panics on any input.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// Largest frame body accepted by default (4 MiB).
pub const MAX_FRAME: usize = 4 << 20;

/// Why bytes could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not a valid message: {0}")]
    BadMessage(String),
    #[error("peer speaks protocol version {got}, this build speaks {PROTOCOL_VERSION}; upgrade the older side")]
    Version { got: u32 },
    #[error("stream ended in the middle of a frame")]
    Truncated,
}

/// Every message travels in this envelope so a peer can tell a version it does not speak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    pub msg: T,
}

/// Encodes `msg` as one frame (header and body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_with_limit(msg, MAX_FRAME)
}

/// Like [`encode`] with an explicit size limit.
pub fn encode_with_limit<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let env = Envelope {
        v: PROTOCOL_VERSION,
        msg,
    };
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, &env).map_err(|e| FrameError::BadMessage(e.to_string()))?;
    let len = out.len() - 4;
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame body into a message, checking the version.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let version: VersionOnly =
        serde_json::from_slice(body).map_err(|e| FrameError::BadMessage(e.to_string()))?;
    if version.v != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version.v });
    }
    let env: Envelope<T> =
        serde_json::from_slice(body).map_err(|e| FrameError::BadMessage(e.to_string()))?;
    Ok(env.msg)
}

/// Reads the body length from a frame header, refusing lengths over `max`.
pub fn body_len(header: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    buf: Vec<u8>,
    /// Length of the frame being read, once its header is complete.
    want: Option<usize>,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max,
            buf: Vec::new(),
            want: None,
            failed: None,
        }
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes and returns every frame they complete. After an error the decoder is
    /// poisoned (framing is lost) and returns the same error forever.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut frames = Vec::new();
        while !data.is_empty() {
            let target = self.want.unwrap_or(4);
            let take = (target - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < target {
                break;
            }
            if self.want.take().is_some() {
                frames.push(std::mem::take(&mut self.buf));
                continue;
            }
            let header = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
            self.buf.clear();
            match body_len(header, self.max) {
                Ok(0) => frames.push(Vec::new()),
                Ok(len) => {
                    self.buf.reserve_exact(len);
                    self.want = Some(len);
                }
                Err(e) => {
                    self.buf = Vec::new();
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(frames)
    }

    /// Call at end of stream: an incomplete frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() && self.want.is_none() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }

    #[test]
    fn round_trip_in_every_split() {
        let mut bytes = encode(&Ping { n: 1 }).unwrap();
        bytes.extend(encode(&Ping { n: 2 }).unwrap());
        for split in 0..bytes.len() {
            let mut d = Decoder::new(MAX_FRAME);
            let mut frames = d.push(&bytes[..split]).unwrap();
            frames.extend(d.push(&bytes[split..]).unwrap());
            let msgs: Vec<Ping> = frames.iter().map(|f| decode(f).unwrap()).collect();
            assert_eq!(msgs, vec![Ping { n: 1 }, Ping { n: 2 }], "split {split}");
            d.finish().unwrap();
        }
        // One byte at a time.
        let mut d = Decoder::new(MAX_FRAME);
        let n: usize = bytes.iter().map(|b| d.push(&[*b]).unwrap().len()).sum();
        assert_eq!(n, 2);
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut d = Decoder::new(16);
        let err = d.push(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 16
            }
        );
        assert_eq!(d.buffered(), 0);
        assert!(d.push(&[0]).is_err(), "decoder must stay poisoned");
        assert!(
            d.finish().is_err(),
            "a poisoned decoder cannot finish cleanly"
        );
        assert!(encode_with_limit(&Ping { n: 1 }, 4).is_err());
    }

    #[test]
    fn truncated_and_garbage_input_are_errors_not_panics() {
        let bytes = encode(&Ping { n: 7 }).unwrap();
        let mut d = Decoder::new(MAX_FRAME);
        assert!(d.push(&bytes[..bytes.len() - 1]).unwrap().is_empty());
        assert_eq!(d.finish(), Err(FrameError::Truncated));
        assert!(decode::<Ping>(b"\x00\xffnot json").is_err());
        assert!(decode::<Ping>(br#"{"v":1,"msg":{"n":"x"}}"#).is_err());
    }

    #[test]
    fn other_versions_are_named() {
        let err = decode::<Ping>(br#"{"v":2,"msg":{"n":1}}"#).unwrap_err();
        assert_eq!(err, FrameError::Version { got: 2 });
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn empty_frame_is_a_frame() {
        let mut d = Decoder::new(8);
        assert_eq!(d.push(&[0, 0, 0, 0]).unwrap(), vec![Vec::<u8>::new()]);
    }
}
