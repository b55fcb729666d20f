//! The client side of the control protocol over quinn: connect, and one-shot requests.

use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::MAX_FRAME;
use crate::io::{self, IoError};
use crate::msg::{Request, Response};

/// Why talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to the coordinator at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("coordinator at {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("connection to the coordinator failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("talking to the coordinator: {0}")]
    Io(#[from] IoError),
    #[error("the coordinator closed the stream without answering")]
    NoAnswer,
}

/// Connects to `addr` with `config`, within `timeout`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
    timeout: Duration,
) -> Result<quinn::Connection, ClientError> {
    let connecting = endpoint
        .connect_with(config, addr, "coordinator.strait.internal")
        .map_err(|e| ClientError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ClientError::Connect {
            addr,
            reason: e.to_string(),
        }),
        Err(_) => Err(ClientError::Timeout {
            addr,
            secs: timeout.as_secs(),
        }),
    }
}

/// Sends one request on a new stream and reads its response.
pub async fn call(
    conn: &quinn::Connection,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let addr = conn.remote_address();
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        io::write(&mut send, request).await?;
        let _ = send.finish();
        io::read::<Response, _>(&mut recv, MAX_FRAME)
            .await?
            .ok_or(ClientError::NoAnswer)
    };
    match tokio::time::timeout(timeout, work).await {
        // A stream cut by the coordinator closing the connection: its reason (revoked,
        // a limit...) says more than the stream's "connection lost".
        Ok(Err(e @ ClientError::Io(IoError::Stream(_)))) => Err(conn
            .close_reason()
            .map(ClientError::Connection)
            .unwrap_or(e)),
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            addr,
            secs: timeout.as_secs(),
        }),
    }
}
