//! QUIC helpers for tests: an echo server that reports each peer's identity (or why its
//! handshake failed), and a client exchange that proves a connection carries data.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strait_pki::tls::{peer_identity, peer_serial, quic_client_config, quic_server_config};
use strait_pki::Identity;
use tokio::sync::mpsc;

/// What the server learned about one incoming connection.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub identity: Option<Identity>,
    pub serial: Option<String>,
}

pub struct EchoServer {
    pub endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    results: mpsc::UnboundedReceiver<Result<Accepted, String>>,
}

impl EchoServer {
    /// Listens on a loopback port; every connection echoes each bidirectional stream.
    pub fn start(config: rustls::ServerConfig) -> Result<EchoServer> {
        let endpoint = quinn::Endpoint::server(
            quic_server_config(config)?,
            "127.0.0.1:0".parse().context("loopback address")?,
        )?;
        let addr = endpoint.local_addr()?;
        let (tx, results) = mpsc::unbounded_channel();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let accepted = peer_identity(&conn)
                        .map(|identity| Accepted {
                            identity,
                            serial: peer_serial(&conn),
                        })
                        .map_err(|e| e.to_string());
                    let _ = tx.send(accepted);
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(data) = recv.read_to_end(1 << 16).await {
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                                let _ = send.stopped().await;
                            }
                        });
                    }
                });
            }
        });
        Ok(EchoServer {
            endpoint,
            addr,
            results,
        })
    }

    /// The outcome of the next connection attempt (waits at most 10 s).
    pub async fn next(&mut self) -> Result<Result<Accepted, String>> {
        tokio::time::timeout(Duration::from_secs(10), self.results.recv())
            .await
            .context("no connection reached the server within 10 s")?
            .context("server stopped")
    }
}

/// Connects with `config` and echoes one message; returns the connection on success.
pub async fn connect_and_echo(
    config: rustls::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quic_client_config(config)?);
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(addr, "coordinator.strait.internal")?,
    )
    .await
    .context("handshake timed out")??;
    echo(&conn).await?;
    Ok(conn)
}

/// Sends a message on a new stream and checks it comes back.
pub async fn echo(conn: &quinn::Connection) -> Result<()> {
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"strait-echo").await?;
        send.finish()?;
        let back = recv.read_to_end(1024).await?;
        if back != b"strait-echo" {
            bail!("echo returned {back:?}");
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .context("echo timed out")?
}
