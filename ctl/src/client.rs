//! `straitctl`'s client: one request to the coordinator over QUIC with the operator's
//! certificate, and the exit code each failure maps to.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use strait_pki::tls::{client_config, quic_client_config, CertStore};
use strait_pki::{CertBundle, Role};
use strait_proto::client::{self, ClientError};
use strait_proto::frame::MAX_FRAME;
use strait_proto::msg::{ErrorBody, ErrorCode, Request, Response};
use strait_proto::{io as wire, ALPN};

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    /// The coordinator refused the request for another reason.
    pub const FAILED: i32 = 1;
    /// Bad command line (clap's code).
    pub const USAGE: i32 = 2;
    /// No connection: address, network, TLS or certificate problem.
    pub const UNREACHABLE: i32 = 3;
    /// The certificate may not do this (or none was presented).
    pub const DENIED: i32 = 4;
    /// The named node, site or peer does not exist.
    pub const NOT_FOUND: i32 = 5;
    /// The request was invalid (bad site, ttl, token...).
    pub const INVALID: i32 = 6;
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

fn fail(code: i32, message: impl Into<String>) -> anyhow::Error {
    CtlError {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error from [`request`].
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<CtlError>()
        .map(|c| c.code)
        .unwrap_or(exit::FAILED)
}

/// Connects to the coordinator at `addr` with the operator certificate in `tls_dir`
/// (`cert.pem`, `key.pem`, `ca.pem`).
async fn connect(
    addr: &str,
    tls_dir: &Path,
    timeout: Duration,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let bundle = CertBundle::load(tls_dir).map_err(|e| {
        fail(
            exit::UNREACHABLE,
            format!(
                "no usable operator certificate in {} ({e}); pass --tls-dir (init writes <state-dir>/operator) or set STRAIT_TLS_DIR",
                tls_dir.display()
            ),
        )
    })?;
    if bundle.identity.role() != Role::Operator {
        eprintln!(
            "warning: {} holds a {} certificate, not an operator one; the coordinator will refuse operator commands",
            tls_dir.display(),
            bundle.identity.role()
        );
    }
    let mesh = bundle.identity.mesh().to_string();
    let cas = bundle.ca.clone();
    let store = CertStore::new(bundle)?;
    let tls = client_config(&cas, Some(store), &mesh, &[Role::Coordinator], ALPN)?;
    let addr = resolve(addr).await?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .context("wildcard address")?;
    let endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    let conn = client::connect(&endpoint, addr, quic_client_config(tls)?, timeout)
        .await
        .map_err(|e| fail(exit::UNREACHABLE, e.to_string()))?;
    Ok((endpoint, conn))
}

fn client_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Connection(c) => fail(
            exit::UNREACHABLE,
            format!("the coordinator closed the connection: {c} (is the certificate from this mesh's CA, unexpired and not revoked?)"),
        ),
        other => fail(exit::UNREACHABLE, other.to_string()),
    }
}

fn refused(e: &ErrorBody) -> anyhow::Error {
    let code = match e.code {
        ErrorCode::Unauthenticated | ErrorCode::PermissionDenied | ErrorCode::Revoked => {
            exit::DENIED
        }
        ErrorCode::NotFound => exit::NOT_FOUND,
        ErrorCode::BadRequest | ErrorCode::InvalidToken => exit::INVALID,
        ErrorCode::Unsupported
        | ErrorCode::Unavailable
        | ErrorCode::RateLimited
        | ErrorCode::Internal => exit::FAILED,
    };
    fail(code, format!("coordinator refused: {e}"))
}

/// Sends one request to the coordinator at `addr`, authenticating with the operator
/// certificate in `tls_dir`.
pub async fn request(
    addr: &str,
    tls_dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response> {
    let (endpoint, conn) = connect(addr, tls_dir, timeout).await?;
    let response = client::call(&conn, req, timeout)
        .await
        .map_err(client_error)?;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    match response {
        Response::Error(e) => Err(refused(&e)),
        ok => Ok(ok),
    }
}

/// Sends `req` and hands every answer to `on` as it arrives, until the coordinator says the
/// probe is done. `idle` bounds the wait for each answer.
pub async fn stream(
    addr: &str,
    tls_dir: &Path,
    req: &Request,
    idle: Duration,
    mut on: impl FnMut(Response),
) -> Result<()> {
    let (endpoint, conn) = connect(addr, tls_dir, idle).await?;
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| client_error(e.into()))?;
        wire::write(&mut send, req)
            .await
            .map_err(|e| client_error(e.into()))?;
        let _ = send.finish();
        loop {
            let next = tokio::time::timeout(idle, wire::read::<Response, _>(&mut recv, MAX_FRAME))
                .await
                .map_err(|_| {
                    fail(
                        exit::UNREACHABLE,
                        format!(
                            "no answer from the coordinator within {}",
                            humantime::format_duration(idle)
                        ),
                    )
                })?
                .map_err(|e| client_error(e.into()))?;
            match next {
                None => return Err(client_error(ClientError::NoAnswer)),
                Some(Response::ProbeDone) => return Ok(()),
                Some(Response::Error(e)) => return Err(refused(&e)),
                Some(other) => on(other),
            }
        }
    }
    .await;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    result
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| {
        fail(
            exit::UNREACHABLE,
            format!("cannot resolve coordinator address {addr:?} ({e}); write host:port, e.g. 203.0.113.10:7443"),
        )
    })?;
    addrs.next().ok_or_else(|| {
        fail(
            exit::UNREACHABLE,
            format!("{addr:?} resolves to no address"),
        )
    })
}
