//! A deliberately small HTTP/1.1 listener for scrapes and probes: `GET` only, one request
//! per connection, the request head bounded to 8 KiB and 5 s, at most 32 connections at
//! once. Anything else gets a 4xx; nothing a client sends can panic the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::Readiness;

const MAX_HEAD: usize = 8 << 10;
const READ_WITHIN: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 32;

/// An HTTP answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The answer to the request whose head is `head` (pure: no IO).
pub fn answer(head: &[u8], registry: &Registry, readiness: &Readiness) -> Answer {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Answer::text(400, "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::text(505, "only HTTP/1.x is served\n");
    }
    if method != "GET" && method != "HEAD" {
        return Answer::text(405, "only GET is served\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => Answer {
                    status: 200,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                },
                Err(_) => Answer::text(500, "could not encode the metrics\n"),
            }
        }
        "/healthz" => Answer::text(200, "ok\n"),
        "/readyz" => match readiness.state() {
            Ok(()) => Answer::text(200, "ready\n"),
            Err(reason) => Answer::text(503, format!("not ready: {reason}\n")),
        },
        _ => Answer::text(404, "not found; try /metrics, /healthz or /readyz\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

/// Binds `listen` (a clear error names the address if it cannot).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| {
        format!(
            "cannot listen for metrics on {listen}: {e}; choose another `metrics-listen` address"
        )
    })
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, readiness: Arc<Readiness>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener busy; connection dropped");
            continue;
        };
        let (registry, readiness) = (registry.clone(), readiness.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = one(stream, &registry, &readiness).await {
                tracing::trace!(%peer, error = %e, "metrics request");
            }
        });
    }
}

async fn one(
    mut stream: TcpStream,
    registry: &Registry,
    readiness: &Readiness,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let answer = loop {
        match tokio::time::timeout(READ_WITHIN, stream.read(&mut buf)).await {
            Err(_) => break Answer::text(408, "request head not received in time\n"),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break answer(&head, registry, readiness);
        }
        if head.len() > MAX_HEAD {
            break Answer::text(431, "request head too large\n");
        }
    };
    let is_head = head.starts_with(b"HEAD ");
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    if !is_head {
        stream.write_all(answer.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn registry() -> Registry {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        r.register("strait_test_events", "Events seen", c);
        r
    }

    #[test]
    fn paths_methods_and_readiness() {
        let r = registry();
        let ready = Readiness::new("no map yet");
        let m = answer(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", &r, &ready);
        assert_eq!(m.status, 200);
        assert!(m.body.contains("strait_test_events_total 3"), "{}", m.body);
        assert_eq!(
            answer(b"GET /healthz HTTP/1.1\r\n\r\n", &r, &ready).status,
            200
        );
        let not = answer(b"GET /readyz HTTP/1.1\r\n\r\n", &r, &ready);
        assert_eq!(
            (not.status, not.body.as_str()),
            (503, "not ready: no map yet\n")
        );
        ready.set_ready();
        assert_eq!(
            answer(b"GET /readyz?verbose HTTP/1.0\r\n\r\n", &r, &ready).status,
            200
        );
        assert_eq!(
            answer(b"POST /metrics HTTP/1.1\r\n\r\n", &r, &ready).status,
            405
        );
        assert_eq!(
            answer(b"GET /nope HTTP/1.1\r\n\r\n", &r, &ready).status,
            404
        );
        assert_eq!(
            answer(b"GET /metrics SPDY/3\r\n\r\n", &r, &ready).status,
            505
        );
        for junk in [&b""[..], b"\xff\xfe", b"GET", b"\r\n\r\n"] {
            assert_eq!(answer(junk, &r, &ready).status, 400);
        }
    }

    #[test]
    fn the_listener_answers_and_bounds_the_head() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve(
                listener,
                Arc::new(registry()),
                Arc::new(Readiness::new("starting")),
            ));
            let get = |req: Vec<u8>| async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&req).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            let ok = get(b"GET /metrics HTTP/1.1\r\n\r\n".to_vec()).await;
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            assert!(ok.contains("strait_test_events_total 3"));
            let big =
                get([b"GET /metrics HTTP/1.1\r\nx: ".as_slice(), &[b'a'; 8_900]].concat()).await;
            assert!(big.starts_with("HTTP/1.1 431"), "{big}");
            let not = get(b"GET /readyz HTTP/1.1\r\n\r\n".to_vec()).await;
            assert!(
                not.starts_with("HTTP/1.1 503") && not.ends_with("not ready: starting\n"),
                "{not}"
            );
            server.abort();
        });
    }
}
