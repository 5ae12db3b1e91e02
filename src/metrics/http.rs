//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` (also `/`), one request per
//! connection, bounded request size and time. It stops when the app shuts down or is dropped.

use crate::app::App;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Binds `metrics_addr` and serves scrapes. A bind failure is logged and metrics stay off
/// (the pooler itself keeps running). Returns the bound address.
pub async fn start(app: &Arc<App>) -> Option<SocketAddr> {
    let metrics = app.metrics.as_ref()?;
    let addr = app.config.load().pgferry.metrics_addr.clone();
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen for metrics; metrics disabled");
            return None;
        }
    };
    let local = listener.local_addr().ok()?;
    let _ = metrics.addr.set(local);
    tracing::info!(%local, "metrics at http://{local}/metrics");
    let weak = Arc::downgrade(app);
    let mut stop = app.shutdown_signal();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(weak.clone(), stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            }
        }
    });
    Some(local)
}

async fn serve(app: Weak<App>, mut stream: TcpStream) {
    let head = match tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream)).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_ascii_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let response = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => match app.upgrade() {
            Some(app) => {
                let body = app
                    .metrics
                    .as_ref()
                    .map(|m| m.render(&app))
                    .unwrap_or_default();
                reply(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &body,
                    method == "HEAD",
                )
            }
            None => reply(
                "503 Service Unavailable",
                "text/plain",
                "shutting down\n",
                false,
            ),
        },
        ("GET" | "HEAD", _) => reply("404 Not Found", "text/plain", "try /metrics\n", false),
        _ => reply("405 Method Not Allowed", "text/plain", "GET only\n", false),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line ending the request head; None if it is too long or cut short.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn reply(status: &str, content_type: &str, body: &str, head_only: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}
