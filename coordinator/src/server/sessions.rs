//! Agent sessions: the stream an agent keeps open after `Subscribe`. The session task
//! registers the node, sends its snapshot, then follows the fan-out (woken only by the
//! versions that concern its node, and once versions settle) and writes the deltas
//! [`handlers::session::update`] decides, relays operators' commands to the agent, and
//! hands what the agent reports to [`handlers::session::agent_event`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::{RecvStream, SendStream};
use strait_pki::Identity;
use strait_proto::frame::MAX_FRAME;
use strait_proto::io as wire;
use strait_proto::msg::{close, AgentEvent, ErrorBody, ErrorCode, Registration, SessionEvent};

use super::{unix_now, Coordinator};
use crate::handlers::{self, core_err, session::Update};
use crate::mesh::NodeKey;
use crate::metrics::Refusal;

/// How long a session that the coordinator ends waits for the agent to read why.
const SESSION_LINGER: Duration = Duration::from_secs(2);

/// What a session is opened with, besides its connection and identity.
pub(super) struct Opened {
    pub(super) serial: String,
    pub(super) not_after: u64,
    pub(super) reg: Box<Registration>,
}

/// Ends a session with the reason, and lets the agent read it: the stream is finished, then
/// whatever the agent still sends is read and dropped until its side ends or
/// [`SESSION_LINGER`] passes. Dropping the receive side at once would send STOP_SENDING,
/// which can reach the agent first: its next heartbeat then fails with "stopped by peer"
/// and the reason (say, "this node was removed") is never read.
async fn end_session(
    send: &mut SendStream,
    recv: &mut RecvStream,
    frames: &mut wire::FrameReader,
    body: ErrorBody,
) {
    if wire::write_encoded(send, SessionEvent::Closing(body))
        .await
        .is_err()
    {
        return;
    }
    let _ = send.finish();
    let drain = async { while let Ok(Some(_)) = frames.next::<AgentEvent, _>(recv).await {} };
    let _ = tokio::time::timeout(SESSION_LINGER, drain).await;
}

/// An agent's session: register, send a snapshot, then a delta for every map change, and
/// take heartbeats until the stream or connection ends.
///
/// Thousands of these wait at once, so their state is kept small (about 36 KiB per agent is
/// quinn's and rustls' own; see BENCHMARKS.md): a plain function returning an `async`
/// block (an `async fn` keeps two copies of its arguments), registration in a boxed future
/// freed once done, frames read in place by a cancel-safe reader (no reader task or channel)
/// and messages encoded before they are written (a future holds bytes, not the message).
// Not an `async fn`: its state would hold every argument twice (rustc copies them).
#[allow(clippy::manual_async_fn)]
pub(super) fn session(
    c: Arc<Coordinator>,
    conn: quinn::Connection,
    identity: Identity,
    opened: Opened,
    mut send: SendStream,
    mut recv: RecvStream,
) -> impl Future<Output = ()> {
    async move {
        let key = handlers::session::node_key(&identity);
        let Some((changes, mut settled, mut current)) =
            Box::pin(open_session(&c, &conn, &identity, &opened, &key, &mut send)).await
        else {
            return;
        };
        let Opened {
            serial, not_after, ..
        } = opened;
        let (command_tx, mut commands) = c.probes.attach(&key);
        c.metrics.agents_connected.inc();
        let mut frames = wire::FrameReader::new(MAX_FRAME);
        // A session ends when the certificate it was opened with expires: identity is only
        // as good as a current certificate (agents move to a renewed one before,
        // make-before-break).
        let expiry = tokio::time::sleep(Duration::from_secs(not_after.saturating_sub(unix_now())));
        tokio::pin!(expiry);
        // A change that leaves this node's map as it was only moves the version: the fan-out
        // does not wake this session for it, and the new version is sent with this node's
        // next change or once versions settle (see `crate::fanout`), so a burst of
        // registrations elsewhere costs neither a wake-up nor a message each.
        loop {
            let settling = tokio::select! {
                _ = &mut expiry => {
                    tracing::warn!(identity = %identity, serial = %serial, "session closed: its certificate expired");
                    let body = ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        format!("the certificate this session was opened with (serial {serial}) expired; reconnect with a renewed certificate"),
                    );
                    Box::pin(end_session(&mut send, &mut recv, &mut frames, body)).await;
                    conn.close(close::CERT_EXPIRED.into(), b"certificate expired");
                    break;
                }
                () = changes.changed() => false,
                changed = settled.changed() => {
                    if changed.is_err() { break }
                    true
                }
                Some(command) = commands.recv() => {
                    let out = wire::write_encoded(&mut send, SessionEvent::Command(*command));
                    if out.await.is_err() {
                        break;
                    }
                    continue;
                }
                event = frames.next::<AgentEvent, _>(&mut recv) => {
                    match event {
                        Ok(Some(event)) => on_agent_event(&c, &key, &identity, event),
                        Ok(None) => break,
                        Err(wire::IoError::Stream(e)) => {
                            tracing::info!(identity = %identity, error = %e, "session ended: connection lost");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(identity = %identity, error = %e, "session closed: bad frame from agent");
                            conn.close(close::PROTOCOL.into(), b"bad frame on session stream");
                            break;
                        }
                    }
                    continue;
                }
            };
            // A statement of its own: the whole `Views` is dropped before any write, so a
            // session waiting on a slow peer holds only its node's parts of a version.
            let update = handlers::session::update(&current, &c.fanout.views(), &key, settling);
            let (delta, next, version_only) = match update {
                Update::Nothing => continue,
                Update::Removed(body) => {
                    Box::pin(end_session(&mut send, &mut recv, &mut frames, body)).await;
                    break;
                }
                Update::Send {
                    delta,
                    next,
                    version_only,
                } => (delta, next, version_only),
            };
            let out = wire::write_encoded(&mut send, SessionEvent::Delta(delta));
            if out.await.is_err() {
                break;
            }
            if !version_only {
                let (version, at) = *c.published.lock().unwrap_or_else(|p| p.into_inner());
                if version == next.version {
                    c.metrics.fanout.observe(at.elapsed().as_secs_f64());
                }
            }
            current = next;
        }
        c.probes.detach(&key, &command_tx);
        c.metrics.agents_connected.dec();
        let mut sessions = c.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions
            .get(&key)
            .is_some_and(|s| s.stable_id() == conn.stable_id())
        {
            sessions.remove(&key);
        }
    }
}

/// Registers the node and sends it `Registered` and its snapshot. Returns the session's
/// subscriptions (made before registering, so no change after the snapshot is missed) and
/// the view the snapshot showed; `None` once the session is over (refused or gone).
async fn open_session<'c>(
    c: &'c Coordinator,
    conn: &quinn::Connection,
    identity: &Identity,
    opened: &Opened,
    key: &NodeKey,
    send: &mut SendStream,
) -> Option<(
    crate::fanout::Subscription<'c>,
    tokio::sync::watch::Receiver<u64>,
    crate::mesh::NodeView,
)> {
    let changes = c.fanout.subscribe(key);
    let settled = c.fanout.settled();
    let mut refusal = Refusal::Registration;
    let now = SystemTime::now();
    let registered = c.mutate(|mesh| {
        handlers::session::register(
            mesh,
            identity,
            &opened.reg,
            &opened.serial,
            opened.not_after,
            now,
        )
        .map_err(|e| {
            refusal = handlers::session::registration_refusal(&e);
            core_err(e)
        })
    });
    let registered = match registered {
        Ok(r) => r,
        Err(e) => {
            c.metrics.refused(refusal);
            tracing::warn!(identity = %identity, error = %e, "registration refused");
            let _ = wire::write(send, &SessionEvent::Closing(e)).await;
            let _ = send.finish();
            return None;
        }
    };
    tracing::info!(identity = %identity, overlay = %registered.overlay_ip, refused = registered.refused.len(), "registered");
    for r in &registered.refused {
        c.metrics
            .refused_prefix(crate::policy::Conflict::of(&r.reason).label());
        tracing::warn!(identity = %identity, prefix = %r.prefix, reason = %r.reason, "advertised prefix refused");
    }
    if let Some(old) = c
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), conn.clone())
    {
        if old.stable_id() != conn.stable_id() {
            old.close(close::SHUTDOWN.into(), b"replaced by a newer session");
        }
    }
    // Only this node's parts of the views are kept across the writes: a whole `Views` held
    // by every session while it waits on a slow peer would keep one version per session
    // alive (memory quadratic in the number of agents during a burst of changes).
    let (current, snapshot) = handlers::session::snapshot(&c.fanout.views(), key)?;
    if wire::write(send, &SessionEvent::Registered(registered))
        .await
        .is_err()
        || wire::write(send, &SessionEvent::Snapshot(snapshot))
            .await
            .is_err()
    {
        return None;
    }
    Some((changes, settled, current))
}

/// What an agent reports on its session.
fn on_agent_event(c: &Coordinator, key: &NodeKey, identity: &Identity, event: AgentEvent) {
    if let AgentEvent::Probe { id, event } = event {
        c.probes.deliver(key, id, event);
        return;
    }
    let now = SystemTime::now();
    let result = c.mutate(|mesh| Ok(((), handlers::session::agent_event(mesh, key, &event, now)?)));
    match (event, result) {
        (AgentEvent::AnnounceKey { next_wg_public_key }, Ok(())) => {
            tracing::info!(identity = %identity, next_key = %next_wg_public_key, "key rotation: next key announced")
        }
        (AgentEvent::AnnounceKey { .. }, Err(e)) => {
            tracing::warn!(identity = %identity, error = %e, "key rotation: announced key refused")
        }
        (AgentEvent::KeyInUse { wg_public_key }, Ok(())) => {
            tracing::info!(identity = %identity, key = %wg_public_key, "key rotation: new key in use")
        }
        (AgentEvent::KeyInUse { .. }, Err(e)) => {
            tracing::warn!(identity = %identity, error = %e, "key rotation: switch refused")
        }
        _ => {}
    }
}
