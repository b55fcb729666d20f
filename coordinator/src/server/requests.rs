//! One request per stream: read one frame (bounded in size and time), decide who may send
//! it ([`handlers::admission`]), run its handler on the registry (persisting the ops it
//! returns, see [`Coordinator::mutate`]), audit it, answer one frame. `Subscribe` hands the
//! stream to a session task; a probe streams its events back as they come.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quinn::{RecvStream, SendStream};
use strait_pki::Identity;
use strait_proto::frame::MAX_FRAME;
use strait_proto::io as wire;
use strait_proto::msg::{close, EnrollRequest, ErrorBody, ErrorCode, Request, Response};
use strait_proto::probe::{mbit_per_s, ProbeRequest};
use tokio::sync::mpsc;

use super::sessions::{session, Opened};
use super::transport::Peer;
use super::{store_err, unix_now, Coordinator, REVOKED_REASON};
use crate::handlers::admission::{self, Admitted};
use crate::handlers::{self, error, OsEntropy};
use crate::mesh::ProbePair;
use crate::metrics::Refusal;
use crate::probes;

/// Largest request an unauthenticated peer may send (a token and a CSR).
const MAX_ANONYMOUS_FRAME: usize = 16 << 10;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn handle_stream(
    c: Arc<Coordinator>,
    conn: quinn::Connection,
    peer: Peer,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let limit = if peer.identity.is_some() {
        MAX_FRAME
    } else {
        MAX_ANONYMOUS_FRAME
    };
    let request: Request =
        match tokio::time::timeout(REQUEST_TIMEOUT, wire::read(&mut recv, limit)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                c.metrics.refused(Refusal::BadFrame);
                tracing::warn!(remote = %peer.addr, error = %e, "refused: bad request frame");
                respond(
                    &mut send,
                    &error(ErrorCode::BadRequest, format!("bad request: {e}")),
                )
                .await;
                return;
            }
            Err(_) => {
                respond(
                    &mut send,
                    &error(ErrorCode::BadRequest, "no request within 10 s"),
                )
                .await;
                return;
            }
        };
    let kind = request.kind();
    c.metrics.request(kind);
    let identity = match admission::admit(peer.identity.as_ref(), &request) {
        Ok(Admitted::Enrollment) => {
            let Request::Enroll(req) = &request else {
                unreachable!("only enrollments are admitted as such")
            };
            let r = enroll(&c, req, peer.addr.ip());
            respond(&mut send, &r).await;
            if peer.identity.is_none() && matches!(r, Response::Enrolled { .. }) {
                // The node comes back with its certificate; nothing else is allowed here.
                conn.close(
                    close::SHUTDOWN.into(),
                    b"enrolled; connect again with the new certificate",
                );
            }
            return;
        }
        Ok(Admitted::Identity(id)) => id.clone(),
        Err(refused) => {
            c.metrics.refused(refused.refusal);
            let r = Response::Error(refused.error);
            match &peer.identity {
                Some(identity) => {
                    tracing::warn!(remote = %peer.addr, identity = %identity, request = kind, "refused: {}", refused.reason);
                    if refused.audit {
                        c.audit(&peer, identity, &request, &r);
                    }
                }
                None => {
                    tracing::warn!(remote = %peer.addr, request = kind, "refused: {}", refused.reason)
                }
            }
            respond(&mut send, &r).await;
            return;
        }
    };
    // What the audit log needs of the request, before it is taken apart.
    let audited = request.audit_summary().is_some().then(|| request.clone());
    let now = SystemTime::now();
    let response = match request {
        Request::Enroll(_) => unreachable!("handled above"),
        Request::Subscribe(reg) => {
            // A session lasts as long as its agent: it gets a task of its own that holds
            // only what a session needs, not this task's request handling (2,832 bytes per
            // session before, measured with -Zprint-type-sizes).
            let opened = Opened {
                serial: peer.serial,
                not_after: peer.not_after,
                reg: Box::new(reg),
            };
            tokio::spawn(session(c, conn, identity, opened, send, recv));
            return;
        }
        Request::Probe(req) => {
            // Boxed: a probe's future is large, and inline it would size every stream's
            // task, sessions included (4,272 bytes instead of 2,528, measured).
            Box::pin(probe(&c, &identity, req, &mut send)).await;
            return;
        }
        Request::Renew { csr_pem } => c
            .mutate(|mesh| {
                let rng = &mut OsEntropy;
                handlers::certs::renew(mesh, &*c.pki, &identity, &peer.serial, &csr_pem, now, rng)
            })
            .map_or_else(Response::Error, |issued| issued.renewed()),
        Request::CreateToken {
            site,
            role,
            ttl_secs,
        } => c
            .mutate(|mesh| {
                let rng = &mut OsEntropy;
                handlers::operator::create_token(mesh, &*c.pki, &site, role, ttl_secs, now, rng)
            })
            .map_or_else(Response::Error, Response::Token),
        Request::Revoke { node } => revoke(&c, &node, now),
        Request::RotateKey { node } => rotate_key(&c, &node).await,
        Request::CreateOperator {
            name,
            role,
            csr_pem,
            ttl_secs,
        } => {
            let rng = &mut OsEntropy;
            let issued = handlers::certs::create_operator(
                &c.core().mesh,
                &*c.pki,
                &name,
                role,
                &csr_pem,
                ttl_secs,
                now,
                rng,
            );
            match issued {
                Ok(issued) => {
                    tracing::info!(identity = %issued.identity, serial = %issued.cert.serial, "operator certificate issued");
                    issued.operator_created()
                }
                Err(e) => Response::Error(e),
            }
        }
        Request::Audit { limit, before } => {
            let limit = handlers::operator::audit_limit(limit);
            match c.core().store.audit(limit, before) {
                Ok(entries) => Response::Audit { entries },
                Err(e) => Response::Error(store_err(&e)),
            }
        }
        other => handlers::operator::view(&c.core().mesh, &*c.pki, &other)
            .unwrap_or_else(|| unreachable!("every other request is a view")),
    };
    if let Response::Error(e) = &response {
        tracing::info!(identity = %identity, request = kind, error = %e, "request refused");
    }
    if let Some(request) = &audited {
        c.audit(&peer, &identity, request, &response);
    }
    respond(&mut send, &response).await;
}

async fn respond(send: &mut SendStream, response: &Response) {
    if wire::write(send, response).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

/// An enrollment from `from`: checked, run on the registry, and a refused join token
/// counted against the address (see [`handlers::certs::bad_token`]).
fn enroll(c: &Coordinator, req: &EnrollRequest, from: IpAddr) -> Response {
    let enrollment = match handlers::certs::check_enrollment(&*c.pki, &c.config.mesh, req) {
        Ok(e) => e,
        Err(e) if e.code == ErrorCode::InvalidToken => return bad_token(c, req, from, e),
        Err(e) => return Response::Error(e),
    };
    let now = SystemTime::now();
    let result =
        c.mutate(|mesh| handlers::certs::enroll(mesh, &*c.pki, &enrollment, now, &mut OsEntropy));
    let token = enrollment.token.id();
    match result {
        Ok(issued) => {
            c.metrics.enrollment(true);
            tracing::info!(identity = %issued.identity, token, "enrolled");
            issued.enrolled()
        }
        Err(e) if e.code == ErrorCode::InvalidToken => bad_token(c, req, from, e),
        Err(e) => {
            c.metrics.enrollment(false);
            tracing::warn!(identity = %enrollment.identity, token, error = %e, "enrollment refused");
            Response::Error(e)
        }
    }
}

/// A refused join token: counted, logged at WARN (at DEBUG only once the address is over
/// its limit, so guessing cannot flood the log), answered.
fn bad_token(c: &Coordinator, req: &EnrollRequest, from: IpAddr, e: ErrorBody) -> Response {
    c.metrics.enrollment(false);
    let refused = {
        let mut limiter = c.enroll_failures();
        handlers::certs::bad_token(&mut limiter, from, e.clone(), Instant::now())
    };
    c.metrics.refused(refused.refusal);
    let from = refused.from;
    if refused.refusal == Refusal::RateLimited {
        tracing::debug!(%from, error = %e, "enrollment refused: bad join token, address over its limit");
    } else {
        tracing::warn!(%from, node = %req.node, site = %req.site, error = %e, "enrollment refused: bad join token");
    }
    refused.response
}

fn revoke(c: &Coordinator, node: &str, now: SystemTime) -> Response {
    match c.mutate(|mesh| handlers::operator::revoke(mesh, node, now)) {
        Ok(revoked) => {
            if let Some(conn) = c
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&revoked.node)
            {
                conn.close(close::REVOKED.into(), REVOKED_REASON);
            }
            tracing::info!(node = %revoked.id(), serials = ?revoked.serials, "revoked");
            revoked.response()
        }
        Err(e) => Response::Error(e),
    }
}

/// Asks a connected node to rotate its WireGuard key now.
async fn rotate_key(c: &Coordinator, node: &str) -> Response {
    let key = match handlers::operator::rotate_key_target(&c.core().mesh, node) {
        Ok(k) => k,
        Err(e) => return Response::Error(e),
    };
    let id = format!("{}/{}", key.0, key.1);
    match probes::rotate_key(&c.probes, &key, &id).await {
        Ok(()) => {
            tracing::info!(node = %id, "key rotation started");
            Response::KeyRotation { node: id }
        }
        Err(e) => Response::Error(e),
    }
}

/// An operator's probe: validated here, run by the agents, each event relayed on `send`
/// as it comes, then `ProbeDone` (or the error).
async fn probe(
    c: &Arc<Coordinator>,
    identity: &Identity,
    req: ProbeRequest,
    send: &mut SendStream,
) {
    let pair = handlers::operator::probe_pair(&c.core().mesh, &req);
    let pair = match pair {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(identity = %identity, error = %e, "probe refused");
            respond(send, &Response::Error(e)).await;
            return;
        }
    };
    tracing::info!(identity = %identity, from = %pair.a_id, to = %pair.b_id, throughput = ?req.throughput_secs, "probe");
    let (tx, mut rx) = mpsc::channel(64);
    let work = run_probe(c, &pair, &req, tx);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(response) = rx.recv() => {
                if wire::write(send, &response).await.is_err() {
                    return; // the operator left; the agents finish on their own
                }
            }
        }
    };
    while let Ok(response) = rx.try_recv() {
        if wire::write(send, &response).await.is_err() {
            return;
        }
    }
    let last = match result {
        Ok(()) => Response::ProbeDone,
        Err(e) => {
            tracing::info!(identity = %identity, error = %e, "probe failed");
            Response::Error(e)
        }
    };
    respond(send, &last).await;
}

async fn run_probe(
    c: &Coordinator,
    pair: &ProbePair,
    req: &ProbeRequest,
    out: mpsc::Sender<Response>,
) -> Result<(), ErrorBody> {
    match req.throughput_secs {
        None => probes::ping(&c.probes, pair, req.count, req.interval_ms, &out).await,
        Some(secs) => {
            let m = probes::throughput(&c.probes, pair, secs, &out).await?;
            let mbps = mbit_per_s(m.bytes, m.elapsed_ms);
            c.core()
                .mesh
                .record_throughput(&pair.a, &pair.b_id, mbps, unix_now());
            tracing::info!(from = %pair.a_id, to = %pair.b_id, mbps, bytes = m.bytes, "throughput measured");
            Ok(())
        }
    }
}

/// Scheduled throughput probes: every `interval`, the next pair of online tunnel peers.
pub(super) async fn throughput_schedule(c: Arc<Coordinator>, t: crate::config::ThroughputProbes) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + t.interval, t.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(String, String)> = None;
    let secs = t.duration.as_secs() as u32;
    loop {
        every.tick().await;
        let pair = {
            let core = c.core();
            let pairs = core.mesh.tunnel_pairs();
            probes::next_pair(&pairs, last.as_ref())
                .cloned()
                .and_then(|(a, b)| core.mesh.probe_pair(&a, &b).ok().map(|p| ((a, b), p)))
        };
        let Some((ids, pair)) = pair else { continue };
        last = Some(ids);
        let (tx, mut rx) = mpsc::channel(64);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let req = ProbeRequest {
            from: pair.a_id.clone(),
            to: pair.b_id.clone(),
            count: 0,
            interval_ms: 0,
            throughput_secs: Some(secs),
        };
        if let Err(e) = run_probe(&c, &pair, &req, tx).await {
            tracing::warn!(from = %pair.a_id, to = %pair.b_id, error = %e, "scheduled throughput probe failed");
        }
        let _ = drain.await;
    }
}
