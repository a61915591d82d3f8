//! A recording HTTP proxy: it sits between the S3 client and the server and records the head
//! of every request as it crosses the wire, so tests can assert what was actually sent
//! (`Content-MD5`, `x-amz-checksum-sha256`, `If-None-Match`, lock headers) rather than what the
//! code meant to send. It forces one request per connection (`Connection: close`), so every
//! request passes through the recorder.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// While set, connections are closed as soon as they are accepted: the store is "down".
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Self::start_stripping(upstream, &[]).await
    }

    /// A proxy that also removes the named request headers before forwarding, to imitate a
    /// server that ignores them (as Ceph RGW ignores `If-None-Match` on versioned buckets).
    pub async fn start_stripping(upstream: SocketAddr, strip: &'static [&'static str]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_down = down.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                if is_down.load(std::sync::atomic::Ordering::Acquire) {
                    drop(conn);
                    continue;
                }
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = relay(conn, upstream, log, strip).await;
                });
            }
        });
        Proxy {
            addr,
            requests,
            down,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Release);
    }

    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.requests.lock().unwrap())
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    strip: &[&str],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    log.lock().unwrap().push(Recorded {
        method,
        target,
        headers: headers.clone(),
    });
    let mut rewritten = format!("{request_line}\r\n");
    for (k, v) in &headers {
        if !k.eq_ignore_ascii_case("connection") && !strip.iter().any(|s| k.eq_ignore_ascii_case(s))
        {
            rewritten.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(rewritten.as_bytes()).await?;
    server.write_all(&buf[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
