//! Probes operators ask for (`straitctl probe A B`), and scheduled throughput probes.
//!
//! The coordinator does not measure anything itself: it hands [`Command`]s to agents on
//! their session streams and relays what they report. [`Probes`] keeps, per connected
//! agent, the channel into its session, and, per running command, where its events go
//! (checking they come from the node the command went to). [`ping`] and [`throughput`]
//! orchestrate one probe and write [`Response`]s for the operator to `out`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use strait_proto::msg::{ErrorBody, ErrorCode, Response};
use strait_proto::probe::{Action, Command, ProbeEvent};
use tokio::sync::mpsc;

use crate::mesh::{NodeKey, ProbePair};

/// Commands waiting to be written to one session.
const COMMAND_QUEUE: usize = 8;
/// Events of one command waiting to be relayed.
const EVENT_QUEUE: usize = 256;
/// How long a throughput receiver may take to start listening.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);
/// Extra time for a transfer beyond its duration (connect, drain, answer).
const TRANSFER_SLACK: Duration = Duration::from_secs(30);

/// Sessions' command channels and running commands.
#[derive(Default)]
pub struct Probes {
    next_id: AtomicU64,
    /// Commands are boxed: a channel allocates its slots 32 at a time, so an idle channel of
    /// unboxed commands costs every session about 3 KiB (measured with heaptrack).
    sessions: Mutex<HashMap<NodeKey, mpsc::Sender<Box<Command>>>>,
    running: Mutex<HashMap<u64, (NodeKey, mpsc::Sender<ProbeEvent>)>>,
    /// One throughput transfer in the mesh at a time.
    transfer_busy: AtomicBool,
}

/// A command sent to an agent; its events arrive on `events`. Dropping it forgets the
/// command (later events are discarded).
pub struct Running<'a> {
    probes: &'a Probes,
    id: u64,
    pub events: mpsc::Receiver<ProbeEvent>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.probes.running).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, message)
}

impl Probes {
    /// A session for `key` starts: commands for the node go to the returned receiver (a
    /// newer session of the same node takes over).
    pub fn attach(
        &self,
        key: &NodeKey,
    ) -> (mpsc::Sender<Box<Command>>, mpsc::Receiver<Box<Command>>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        lock(&self.sessions).insert(key.clone(), tx.clone());
        (tx, rx)
    }

    /// The session holding `tx` ended.
    pub fn detach(&self, key: &NodeKey, tx: &mpsc::Sender<Box<Command>>) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(key).is_some_and(|cur| cur.same_channel(tx)) {
            sessions.remove(key);
        }
    }

    /// An event from node `from` for command `id`. Events for commands that are not
    /// running, or that went to another node, are dropped.
    pub fn deliver(&self, from: &NodeKey, id: u64, event: ProbeEvent) {
        let mut running = lock(&self.running);
        let Some((node, tx)) = running.get(&id) else {
            tracing::debug!(node = ?from, id, "event for no running command; dropped");
            return;
        };
        if node != from {
            tracing::warn!(node = ?from, id, "event for another node's command; dropped");
            return;
        }
        let last = event.is_final();
        if tx.try_send(event).is_err() || last {
            running.remove(&id);
        }
    }

    /// Sends `action` to `node`'s session.
    pub fn start(
        &self,
        node: &NodeKey,
        node_id: &str,
        action: Action,
    ) -> Result<Running<'_>, ErrorBody> {
        let Some(session) = lock(&self.sessions).get(node).cloned() else {
            return Err(unavailable(format!(
                "{node_id} has no session with this coordinator (offline, or connected to another coordinator)"
            )));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        lock(&self.running).insert(id, (node.clone(), tx));
        let running = Running {
            probes: self,
            id,
            events,
        };
        session
            .try_send(Box::new(Command { id, action }))
            .map_err(|_| {
                unavailable(format!("{node_id}'s session is busy or closing; try again"))
            })?;
        Ok(running)
    }
}

/// The next event of `running` from `node_id`, by `deadline`.
async fn next(
    running: &mut Running<'_>,
    node_id: &str,
    deadline: tokio::time::Instant,
) -> Result<ProbeEvent, ErrorBody> {
    match tokio::time::timeout_at(deadline, running.events.recv()).await {
        Ok(Some(ProbeEvent::Failed { message })) => Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("{node_id}: {message}"),
        )),
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(unavailable(format!("{node_id} stopped reporting"))),
        Err(_) => Err(unavailable(format!("{node_id} did not finish in time"))),
    }
}

/// Asks `node`'s agent to rotate its WireGuard key; done once it has announced the key.
pub async fn rotate_key(probes: &Probes, node: &NodeKey, node_id: &str) -> Result<(), ErrorBody> {
    let mut running = probes.start(node, node_id, Action::RotateKey)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    match next(&mut running, node_id, deadline).await? {
        ProbeEvent::Done => Ok(()),
        other => Err(unavailable(format!(
            "{node_id} answered a key rotation with {other:?}"
        ))),
    }
}

/// Forwards `event` from `node` to the operator; false when the operator has gone.
async fn relay(out: &mpsc::Sender<Response>, node: &str, event: ProbeEvent) -> bool {
    out.send(Response::Probe {
        node: node.to_string(),
        event,
    })
    .await
    .is_ok()
}

/// `count` rounds of probes from `pair.a` on every path to `pair.b`, relayed as they come.
pub async fn ping(
    probes: &Probes,
    pair: &ProbePair,
    count: u32,
    interval_ms: u64,
    out: &mpsc::Sender<Response>,
) -> Result<(), ErrorBody> {
    let action = Action::Ping {
        peer: pair.b_id.clone(),
        count,
        interval_ms,
    };
    let mut running = probes.start(&pair.a, &pair.a_id, action)?;
    let budget = Duration::from_millis(interval_ms.saturating_mul(count.into())) + PING_SLACK;
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        match next(&mut running, &pair.a_id, deadline).await? {
            ProbeEvent::Done => return Ok(()),
            event => {
                if !relay(out, &pair.a_id, event).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Time beyond the rounds for the last replies (the agents' timeout is 2 s).
const PING_SLACK: Duration = Duration::from_secs(5);

/// What a throughput probe measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// A transfer of `secs` seconds from `pair.a` to `pair.b` through their tunnel: `b` opens a
/// one-shot listener for `a`'s overlay address and a fresh nonce, then `a` sends. `a`'s
/// progress is relayed as it comes. One transfer in the mesh at a time.
pub async fn throughput(
    probes: &Probes,
    pair: &ProbePair,
    secs: u32,
    out: &mpsc::Sender<Response>,
) -> Result<Measured, ErrorBody> {
    if probes.transfer_busy.swap(true, Ordering::AcqRel) {
        return Err(unavailable(
            "another throughput probe is running in this mesh; try again when it ends".into(),
        ));
    }
    let result = transfer(probes, pair, secs, out).await;
    probes.transfer_busy.store(false, Ordering::Release);
    result
}

async fn transfer(
    probes: &Probes,
    pair: &ProbePair,
    secs: u32,
    out: &mpsc::Sender<Response>,
) -> Result<Measured, ErrorBody> {
    let nonce = hex_nonce();
    let listen = Action::ThroughputListen {
        from: pair.a_overlay,
        nonce: nonce.clone(),
        secs,
    };
    let mut receiver = probes.start(&pair.b, &pair.b_id, listen)?;
    let port = match next(
        &mut receiver,
        &pair.b_id,
        tokio::time::Instant::now() + LISTEN_WITHIN,
    )
    .await?
    {
        ProbeEvent::Listening { port } => port,
        other => {
            return Err(unavailable(format!(
                "{} answered {other:?} instead of listening",
                pair.b_id
            )))
        }
    };
    let send = Action::ThroughputSend {
        to: (pair.b_overlay, port).into(),
        nonce,
        secs,
    };
    let mut sender = probes.start(&pair.a, &pair.a_id, send)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs.into()) + TRANSFER_SLACK;
    let mut measured = None;
    loop {
        match next(&mut sender, &pair.a_id, deadline).await? {
            ProbeEvent::Done => break,
            ProbeEvent::Throughput { bytes, elapsed_ms } => {
                measured = Some(Measured { bytes, elapsed_ms });
                let _ = relay(
                    out,
                    &pair.a_id,
                    ProbeEvent::Throughput { bytes, elapsed_ms },
                )
                .await;
            }
            event => {
                let _ = relay(out, &pair.a_id, event).await;
            }
        }
    }
    // The receiver's own end: a failure there (after the sender finished) is reported.
    match next(&mut receiver, &pair.b_id, deadline).await? {
        ProbeEvent::Done => {}
        other => tracing::debug!(event = ?other, "receiver's last event"),
    }
    measured.ok_or_else(|| unavailable(format!("{} reported no result", pair.a_id)))
}

fn hex_nonce() -> String {
    let bytes = strait_pki::token::random_token_bytes();
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The pair a scheduled throughput probe measures next: the one after `last` in `pairs`
/// (sorted), wrapping around; the first when `last` is gone or none was measured yet.
pub fn next_pair<'a>(
    pairs: &'a [(String, String)],
    last: Option<&(String, String)>,
) -> Option<&'a (String, String)> {
    let after = last.map_or(0, |l| pairs.partition_point(|p| p <= l));
    pairs.get(after).or_else(|| pairs.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn scheduled_probes_take_pairs_in_turn() {
        let all = pairs(&[("a/gw", "b/gw"), ("a/gw", "c/gw"), ("b/gw", "c/gw")]);
        let first = next_pair(&all, None).unwrap();
        assert_eq!(first, &all[0]);
        assert_eq!(next_pair(&all, Some(&all[0])).unwrap(), &all[1]);
        assert_eq!(next_pair(&all, Some(&all[2])).unwrap(), &all[0], "wraps");
        // The last pair measured went away: the next one after it in order.
        let gone = ("a/gw".to_string(), "bb/gw".to_string());
        assert_eq!(next_pair(&all, Some(&gone)).unwrap(), &all[1]);
        assert_eq!(next_pair(&[], None), None);
    }

    #[test]
    fn events_reach_only_the_command_they_belong_to() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let probes = Probes::default();
            let a: NodeKey = ("a".into(), "gw".into());
            let b: NodeKey = ("b".into(), "gw".into());
            let (tx, mut commands) = probes.attach(&a);
            assert!(
                probes
                    .start(
                        &b,
                        "b/gw",
                        Action::Ping {
                            peer: "a/gw".into(),
                            count: 1,
                            interval_ms: 100
                        }
                    )
                    .is_err(),
                "b has no session"
            );
            let mut running = probes
                .start(
                    &a,
                    "a/gw",
                    Action::Ping {
                        peer: "b/gw".into(),
                        count: 1,
                        interval_ms: 100,
                    },
                )
                .unwrap();
            let id = commands.recv().await.unwrap().id;
            probes.deliver(&b, id, ProbeEvent::Done); // another node: dropped
            probes.deliver(&a, id + 1, ProbeEvent::Done); // no such command: dropped
            probes.deliver(&a, id, ProbeEvent::Listening { port: 1 });
            assert_eq!(
                running.events.try_recv().unwrap(),
                ProbeEvent::Listening { port: 1 }
            );
            assert!(running.events.try_recv().is_err());
            drop(running);
            probes.deliver(&a, id, ProbeEvent::Done); // forgotten: dropped, no panic
            probes.detach(&a, &tx);
            assert!(probes
                .start(
                    &a,
                    "a/gw",
                    Action::Ping {
                        peer: "b/gw".into(),
                        count: 1,
                        interval_ms: 100
                    }
                )
                .is_err());
        });
    }
}
