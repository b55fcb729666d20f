//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by the corpus
//! replay test (`proto/tests/fuzz_corpus.rs`), which runs in plain `cargo test`.
//!
//! Not part of the crate's API. Every function here must return normally for any input; a
//! panic means a real bug (a message that does not survive a round trip, a decoder that
//! buffers more than its limit or disagrees with the reference framing).

use std::any::type_name;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{self, Decoder, FrameError};
use crate::map::NetworkMap;
use crate::msg::{AgentEvent, Request, Response, SessionEvent};

/// Frame size limit of the decoder under test: small, so oversized frames are cheap to hit.
pub const LIMIT: usize = 64 << 10;

/// Fuzzes the frame decoder and every message type.
///
/// `data[0]` picks how the rest of `data` (the byte stream) is cut into `push` calls: 0
/// feeds it in one call, `n > 0` in chunks of 0 to `n` bytes (sizes from a generator seeded
/// with `n`). Checks that:
///
/// - the decoder never buffers more than its limit plus the 4-byte header;
/// - it yields exactly the frames of a straightforward reference parser, whatever the cuts,
///   fails with the same error, stays poisoned after it, and `finish` reports truncation;
/// - every frame that decodes as a [`Request`], [`Response`], [`SessionEvent`] or
///   [`AgentEvent`] re-encodes, and decodes again to an equal message with identical bytes;
/// - snapshots and deltas seen in the stream apply to each other without panicking, and
///   `diff` then `apply` reaches the newer map.
pub fn frames(data: &[u8]) {
    let Some((&ctrl, stream)) = data.split_first() else {
        return;
    };
    let reference = Reference::parse(stream, LIMIT);
    let got = push_in_chunks(ctrl, stream);

    // Frames returned by earlier pushes are delivered; those completed by the push that
    // fails are not, so with an error the decoder's frames are a prefix of the reference's.
    assert_eq!(
        got.error, reference.error,
        "decoder and reference disagree on the error"
    );
    assert!(
        reference.frames.starts_with(&got.frames),
        "decoder yielded frames the reference parser does not"
    );
    if got.error.is_none() {
        assert_eq!(got.frames, reference.frames, "decoder lost frames");
        assert_eq!(
            got.finished.is_ok(),
            reference.complete,
            "finish() disagrees with the reference on truncation"
        );
        if let Err(e) = &got.finished {
            assert_eq!(*e, FrameError::Truncated);
        }
    }

    #[cfg(feature = "io")]
    frame_reader_agrees(ctrl, stream, &reference);

    let mut session = Session::default();
    for body in &got.frames {
        message(body, &mut session);
    }
}

/// [`crate::io::FrameReader`] (how the coordinator reads agent events) against the
/// reference: the stream comes in chunks cut as for the decoder, with a `Pending` before
/// each, and the reader's future is dropped at every `Pending` (a read cancelled by
/// `select!`). It must yield the reference's frames as messages until the first that does
/// not decode, then that decode error; or else the reference's framing error, truncation
/// or the clean end.
#[cfg(feature = "io")]
fn frame_reader_agrees(ctrl: u8, stream: &[u8], reference: &Reference) {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, ReadBuf};

    use crate::io::{FrameReader, IoError};

    struct Chunks<'a> {
        rest: &'a [u8],
        rng: Lcg,
        ctrl: u8,
        ready: bool,
    }
    impl AsyncRead for Chunks<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let ready = self.ready;
            self.ready = !ready;
            if !ready {
                return Poll::Pending;
            }
            let most = if self.ctrl == 0 {
                self.rest.len()
            } else {
                let n = usize::from(self.ctrl) + 1;
                self.rng.below(n).max(1)
            };
            let take = most.min(self.rest.len()).min(buf.remaining());
            let (chunk, tail) = self.rest.split_at(take);
            buf.put_slice(chunk);
            self.rest = tail;
            Poll::Ready(Ok(()))
        }
    }

    let mut src = Chunks {
        rest: stream,
        rng: Lcg(u32::from(ctrl)),
        ctrl,
        ready: false,
    };
    let mut reader = FrameReader::new(LIMIT);
    let mut cx = Context::from_waker(Waker::noop());
    let (mut got, mut end) = (Vec::new(), None);
    // Every poll either makes progress or is followed by one that does.
    for _ in 0..2 * stream.len() + 8 {
        let next = pin!(reader.next::<serde_json::Value, _>(&mut src));
        match next.poll(&mut cx) {
            Poll::Pending => continue,
            Poll::Ready(Ok(Some(v))) => got.push(v),
            Poll::Ready(other) => {
                end = Some(other.map(|_| ()));
                break;
            }
        }
    }
    let end = end.expect("the frame reader made no progress");
    let mut want = Vec::new();
    for body in &reference.frames {
        match frame::decode::<serde_json::Value>(body) {
            Ok(v) => want.push(v),
            Err(e) => {
                assert_eq!(got, want, "frame reader and reference disagree");
                assert!(
                    matches!(&end, Err(IoError::Frame(f)) if f == &e),
                    "frame reader ended with {end:?}, not the decode error {e:?}"
                );
                return;
            }
        }
    }
    assert_eq!(got, want, "frame reader and reference disagree");
    match (&reference.error, reference.complete, &end) {
        (Some(e), _, Err(IoError::Frame(f))) if f == e => {}
        (None, true, Ok(())) => {}
        (None, false, Err(IoError::Frame(FrameError::Truncated))) => {}
        _ => panic!(
            "frame reader ended with {end:?}; reference error {:?}, complete {}",
            reference.error, reference.complete
        ),
    }
}

/// What the decoder produced for one stream.
struct Pushed {
    frames: Vec<Vec<u8>>,
    error: Option<FrameError>,
    finished: Result<(), FrameError>,
}

fn push_in_chunks(ctrl: u8, stream: &[u8]) -> Pushed {
    let mut d = Decoder::new(LIMIT);
    let mut frames = Vec::new();
    let mut error = None;
    let mut rest = stream;
    let mut rng = Lcg(u32::from(ctrl));
    loop {
        let take = if ctrl == 0 {
            rest.len()
        } else {
            rng.below(usize::from(ctrl) + 1).min(rest.len())
        };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        match d.push(chunk) {
            Ok(f) => frames.extend(f),
            Err(e) => {
                // Poisoned: the same error forever, and nothing left buffered.
                assert_eq!(
                    d.push(b"more").unwrap_err(),
                    e,
                    "decoder did not stay poisoned"
                );
                assert_eq!(d.buffered(), 0, "a failed decoder still holds bytes");
                error = Some(e);
            }
        }
        assert!(
            d.buffered() <= LIMIT + 4,
            "decoder buffers {} bytes, limit {LIMIT}",
            d.buffered()
        );
        if error.is_some() || rest.is_empty() {
            break;
        }
    }
    Pushed {
        frames,
        error,
        finished: d.finish(),
    }
}

/// A small linear congruential generator: deterministic chunk sizes from one seed byte.
struct Lcg(u32);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 16) as usize % n
    }
}

/// The framing rules written out plainly, to check the incremental decoder against.
struct Reference {
    frames: Vec<Vec<u8>>,
    error: Option<FrameError>,
    /// The stream ended exactly at a frame boundary.
    complete: bool,
}

impl Reference {
    fn parse(stream: &[u8], max: usize) -> Reference {
        let mut frames = Vec::new();
        let mut rest = stream;
        loop {
            if rest.is_empty() {
                return Reference {
                    frames,
                    error: None,
                    complete: true,
                };
            }
            let Some((header, body)) = rest.split_first_chunk::<4>() else {
                break;
            };
            let len = u32::from_be_bytes(*header) as usize;
            if len > max {
                return Reference {
                    frames,
                    error: Some(FrameError::TooLarge { len, max }),
                    complete: false,
                };
            }
            if body.len() < len {
                break;
            }
            frames.push(body[..len].to_vec());
            rest = &body[len..];
        }
        Reference {
            frames,
            error: None,
            complete: false,
        }
    }
}

/// Maps seen so far on the stream, as an agent would hold them.
#[derive(Default)]
struct Session {
    map: Option<NetworkMap>,
}

/// Decodes one frame body as every message type and checks each that decodes.
fn message(body: &[u8], session: &mut Session) {
    if let Some(req) = round_trip::<Request>(body) {
        let _ = (req.kind(), req.is_operator_command());
    }
    round_trip::<Response>(body);
    round_trip::<AgentEvent>(body);
    match round_trip::<SessionEvent>(body) {
        Some(SessionEvent::Snapshot(new)) => snapshot(session, new),
        Some(SessionEvent::Delta(delta)) => {
            if let Some(map) = &mut session.map {
                let before = map.clone();
                match map.apply(&delta) {
                    Ok(()) => {
                        assert_eq!(map.version, delta.to_version);
                        diff_reaches(&before, map);
                    }
                    Err(gap) => {
                        assert_ne!(before.version, delta.from_version);
                        assert_eq!(*map, before, "a refused delta changed the map");
                        let _ = gap.to_string();
                    }
                }
            }
        }
        _ => {}
    }
}

fn snapshot(session: &mut Session, new: NetworkMap) {
    assert!(new.diff(&new).is_empty(), "a map differs from itself");
    if let Some(old) = &session.map {
        diff_reaches(old, &new);
    }
    session.map = Some(new);
}

/// `old.diff(new)` applied to `old` gives `new`, and the delta survives a round trip.
///
/// Only for two maps of the same mesh (a delta has no mesh name: a node never changes
/// mesh) whose peers are keyed by their id and routes by their prefix, as the coordinator
/// builds them: `apply` inserts by those fields, so other maps cannot be reproduced by it.
fn diff_reaches(old: &NetworkMap, new: &NetworkMap) {
    if old.mesh != new.mesh || !consistent(old) || !consistent(new) {
        return;
    }
    let delta = old.diff(new);
    let mut reached = old.clone();
    reached
        .apply(&delta)
        .expect("a delta from diff must apply to its own base");
    assert_eq!(&reached, new, "diff then apply did not reach the new map");
    let bytes = frame::encode(&SessionEvent::Delta(delta.clone())).expect("encode delta");
    let back: SessionEvent = frame::decode(&bytes[4..]).expect("decode delta");
    assert_eq!(back, SessionEvent::Delta(delta));
}

fn consistent(map: &NetworkMap) -> bool {
    map.peers.iter().all(|(id, p)| *id == p.id) && map.routes.iter().all(|(k, r)| *k == r.prefix)
}

/// Decodes `body` as a `T`; if it is one, checks it survives encode and decode unchanged.
fn round_trip<T>(body: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let msg: T = frame::decode(body).ok()?;
    let name = type_name::<T>();
    let bytes = frame::encode(&msg)
        .unwrap_or_else(|e| panic!("a decoded {name} does not re-encode: {e}: {msg:?}"));
    let mut d = Decoder::new(frame::MAX_FRAME);
    let frames = d
        .push(&bytes)
        .unwrap_or_else(|e| panic!("a re-encoded {name} does not frame: {e}"));
    assert_eq!(frames.len(), 1, "a re-encoded {name} is not one frame");
    d.finish()
        .unwrap_or_else(|e| panic!("a re-encoded {name} is not a whole frame: {e}"));
    let back: T = frame::decode(&frames[0])
        .unwrap_or_else(|e| panic!("a re-encoded {name} does not decode: {e}: {msg:?}"));
    assert_eq!(back, msg, "{name} changed in a round trip");
    let again = frame::encode(&back).expect("encoding an equal message again");
    assert_eq!(again, bytes, "{name} encodes differently the second time");
    Some(msg)
}

/// The committed corpus of fuzz target `target` (`fuzz/corpus/<target>/`).
pub fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of `target`'s corpus through `check`, as the fuzzer would; panics naming
/// the file whose input panics, or when the corpus is missing (fewer than 10 files).
pub fn replay_corpus(target: &str, check: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} holds only {} files: the corpus is missing",
        dir.display(),
        files.len()
    );
    for path in &files {
        let data =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "fuzz input {} panics", path.display());
    }
}

/// Checks `data` with `check`, then writes it as `seed-<name>` into `target`'s corpus.
pub fn write_seed(target: &str, name: &str, data: &[u8], check: fn(&[u8])) {
    check(data);
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("writing a seed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_and_decoder_agree_on_edge_cases() {
        frames(b"");
        frames(b"\x00");
        frames(b"\x01\x00\x00\x00\x00");
        frames(b"\x00\xff\xff\xff\xff");
        frames(b"\x05\x00\x00\x00\x02{}\x00\x00");
        let mut ok = vec![3u8];
        ok.extend(frame::encode(&AgentEvent::Heartbeat { map_version: 9 }).unwrap());
        ok.extend(frame::encode(&Request::Status).unwrap());
        frames(&ok);
        ok.pop();
        frames(&ok);
    }
}
