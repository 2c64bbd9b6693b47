//! The load generator: AdmissionReview POSTs over keep-alive HTTP/1.1 TLS connections (what
//! kube-apiserver uses for webhooks since 1.16), driven by hyper's connection-level client so
//! the generator costs as little CPU as possible on the machine it shares with the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Where the reviews go.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// Path and query, e.g. `/validate?timeout=10s`.
    pub path: Arc<str>,
}

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    path: Arc<str>,
}

impl Target {
    /// A target whose TLS offers only HTTP/1.1, like the apiserver's webhook client.
    pub fn new(addr: SocketAddr, mut tls: rustls::ClientConfig, path: &str) -> Target {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Target {
            addr,
            tls: Arc::new(tls),
            path: path.into(),
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake with pullgate")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            path: self.path.clone(),
        })
    }

    /// `n` connections, opened a few at a time.
    pub async fn connect_many(&self, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
            let opened = futures_util::future::join_all(chunk.iter().map(|_| self.connect())).await;
            for c in opened {
                conns.push(c?);
            }
        }
        Ok(conns)
    }
}

impl Conn {
    /// POSTs one review and returns the response body (the status must be 200).
    pub async fn review(&mut self, body: Bytes) -> anyhow::Result<Bytes> {
        self.sender.ready().await.context("connection closed")?;
        let request = http::Request::post(&*self.path)
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status != http::StatusCode::OK {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }
}

/// Whether a review response admits the object.
pub fn allowed(body: &[u8]) -> bool {
    body.windows(14).any(|w| w == b"\"allowed\":true")
}

/// Latencies in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 60_000_000));
}

/// What a run measured.
pub struct Run {
    pub completed: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    /// Responses that did not admit the pod, or failed.
    pub errors: u64,
    /// Fixed rate only: sends that left more than 2 ms after their scheduled time (tokio's
    /// timer wakes on millisecond ticks, so up to about 1 ms is normal).
    pub late: u64,
    /// Fixed rate only: of those, sends held back because the connection's previous review
    /// was still unanswered at the scheduled time. Latency counts from the send, so only
    /// these could hide server time (coordinated omission); lateness from the generator's
    /// own timer cannot.
    pub held: u64,
}

impl Run {
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

/// Closed loop: every connection sends its next review as soon as the previous one is
/// answered. Counts only what completes inside the measuring window after `warmup`.
pub async fn saturate(
    target: &Target,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Run> {
    let conns = target.connect_many(connections).await?;
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, mut conn)| {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let (mut done, mut errors) = (0u64, 0u64);
                let mut i = k;
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let answer = conn.review(bodies[i % bodies.len()].clone()).await;
                    let finished = Instant::now();
                    i += connections;
                    if sent >= from && finished <= until {
                        done += 1;
                        record(&mut h, finished - sent);
                        if !answer.as_deref().is_ok_and(allowed) {
                            errors += 1;
                        }
                    }
                }
                (h, done, errors)
            })
        })
        .collect();
    let mut run = Run {
        completed: 0,
        elapsed: measure,
        latency: histogram(),
        errors: 0,
        late: 0,
        held: 0,
    };
    for task in tasks {
        let (h, done, errors) = task.await?;
        run.latency.add(h)?;
        run.completed += done;
        run.errors += errors;
    }
    Ok(run)
}

/// Open loop at `rate` reviews/s for `duration`: review `i` is due at `start + i / rate`, on
/// connection `i % connections`. Latency runs from the moment the request is sent; a send
/// that leaves late (the connection was still busy, or the timer woke late) is counted.
pub async fn fixed_rate(
    target: &Target,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Run> {
    let conns = target.connect_many(connections).await?;
    let total = rate * duration.as_secs();
    let period = Duration::from_secs(1) / rate as u32;
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, mut conn)| {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let (mut done, mut errors, mut late, mut held) = (0u64, 0u64, 0u64, 0u64);
                let mut answered = start;
                for i in (k as u64..total).step_by(connections) {
                    let due = start + period * i as u32;
                    tokio::time::sleep_until(due).await;
                    let sent = Instant::now();
                    if sent - due > Duration::from_millis(2) {
                        late += 1;
                        if answered > due {
                            held += 1;
                        }
                    }
                    let answer = conn.review(bodies[i as usize % bodies.len()].clone()).await;
                    answered = Instant::now();
                    record(&mut h, answered - sent);
                    done += 1;
                    if !answer.as_deref().is_ok_and(allowed) {
                        errors += 1;
                    }
                }
                (h, done, errors, late, held)
            })
        })
        .collect();
    let mut run = Run {
        completed: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
        errors: 0,
        late: 0,
        held: 0,
    };
    for task in tasks {
        let (h, done, errors, late, held) = task.await?;
        run.latency.add(h)?;
        run.completed += done;
        run.errors += errors;
        run.late += late;
        run.held += held;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

/// Opens one connection per body, then sends all of them at the same instant. Returns the
/// bodies of the answers in order, each with its latency, and the wall time of the burst.
pub async fn burst(
    target: &Target,
    bodies: Vec<Bytes>,
) -> anyhow::Result<(Vec<(Duration, anyhow::Result<Bytes>)>, Duration)> {
    let conns = target.connect_many(bodies.len()).await?;
    let barrier = Arc::new(Barrier::new(bodies.len() + 1));
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(bodies)
        .map(|(mut conn, body)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let sent = Instant::now();
                let answer = conn.review(body).await;
                (sent.elapsed(), answer)
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await?);
    }
    Ok((answers, started.elapsed()))
}

/// One review on a fresh connection, timed from the send (the TLS handshake excluded).
pub async fn one(target: &Target, body: Bytes) -> anyhow::Result<(Duration, Bytes)> {
    let mut conn = target.connect().await?;
    let sent = Instant::now();
    let answer = conn.review(body).await?;
    Ok((sent.elapsed(), answer))
}
