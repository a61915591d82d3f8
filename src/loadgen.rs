//! A small HTTP client for the daemon, and `wormvault bench ingest`, the load generator.
//!
//! The benchmark starts `wormvault serve` as a child process (so that its peak RSS is its
//! own), posts pre-generated NDJSON batches over several connections, and reports sustained
//! events/s, acknowledgement latency at a paced rate, fsyncs per second (from `/metrics`),
//! peak RSS, and the ratio to `wormvault archive` of the same events.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An answer from the daemon.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client for one daemon.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Client {
    /// `base` like `http://127.0.0.1:8440`.
    pub fn new(base: &str) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector);
        Client {
            inner,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Sends a request; `Err` for transport failures (refused, reset, timed out).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(120), self.inner.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Reply, String> {
        self.send("GET", path, &[], Bytes::new()).await
    }

    /// Posts NDJSON events with a bearer token.
    pub async fn post_events(&self, token: &str, ndjson: Bytes) -> Result<Reply, String> {
        let auth = format!("Bearer {token}");
        self.send(
            "POST",
            "/v1/events",
            &[
                ("authorization", &auth),
                ("content-type", "application/x-ndjson"),
            ],
            ndjson,
        )
        .await
    }

    pub async fn flush(&self, token: &str) -> Result<Reply, String> {
        let auth = format!("Bearer {token}");
        self.send(
            "POST",
            "/v1/flush",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = self.get("/healthz").await
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not become healthy within {within:?}",
                    self.base
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one metric line (`name` with its labels exactly) from `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_in(&self.get("/metrics").await.ok()?.text(), name)
    }

    /// How long the daemon's sequencer has waited so far, from its histograms; `None` if
    /// `/metrics` cannot be read. A histogram is absent until its first observation: zero.
    async fn waits(&self) -> Option<Waits> {
        let text = self.get("/metrics").await.ok()?.text();
        let read = |name| Wait::read(&text, name).unwrap_or_default();
        Some(Waits {
            fsync: read("wormvault_spool_fsync_seconds"),
            handover: read("wormvault_seal_handover_seconds"),
        })
    }
}

/// The value of one metric line (`name` with its labels exactly) in a `/metrics` text.
fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sequencer's two waits that hold acknowledgements: the spool's fsync (the disk) and
/// the hand-over of a closed batch to the seal workers (sealing's CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Waits {
    fsync: Wait,
    handover: Wait,
}

/// Counts from one latency histogram: all observations, and those longer than 25 ms and
/// 100 ms (bucket bounds of the daemon's histograms).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Wait {
    count: f64,
    over_25ms: f64,
    over_100ms: f64,
}

impl Wait {
    fn read(text: &str, name: &str) -> Option<Wait> {
        let count = metric_in(text, &format!("{name}_count"))?;
        let within = |le: &str| metric_in(text, &format!("{name}_bucket{{le=\"{le}\"}}"));
        Some(Wait {
            count,
            over_25ms: count - within("0.025")?,
            over_100ms: count - within("0.1")?,
        })
    }

    fn since(self, before: Wait) -> Wait {
        Wait {
            count: self.count - before.count,
            over_25ms: self.over_25ms - before.over_25ms,
            over_100ms: self.over_100ms - before.over_100ms,
        }
    }

    fn describe(self) -> String {
        format!(
            "{:.0}, {:.0} over 25 ms, {:.0} over 100 ms",
            self.count, self.over_25ms, self.over_100ms
        )
    }
}

impl Waits {
    /// One line for a phase of the benchmark: which of the two waits held acknowledgements.
    fn describe_since(self, before: Waits) -> String {
        format!(
            "spool fsyncs {}; seal hand-overs {}",
            self.fsync.since(before.fsync).describe(),
            self.handover.since(before.handover).describe()
        )
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Options of `wormvault bench ingest`.
#[derive(Clone, Debug)]
pub struct IngestBench {
    pub events: u64,
    pub connections: usize,
    pub batch: usize,
    /// Events per second of the paced phase (latency), 0 to skip it.
    pub paced_rate: u64,
    pub paced_seconds: u64,
    /// Extra TOML for the daemon (e.g. an S3 store); the local store when empty.
    pub store_toml: String,
    pub dir: PathBuf,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Pre-generated NDJSON requests of `batch` events each, with unique ids per `tag`.
fn requests(n: u64, batch: usize, tag: u64) -> Vec<Bytes> {
    let mut rng = crate::bench::Rng::new(tag);
    let start = crate::timestamp::Day::parse("2026-11-02").expect("valid");
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        crate::bench::event_json(&mut rng, i + tag * 1_000_000_000, start, 3, &mut line);
        buf.push_str(&line);
        buf.push('\n');
        if (i + 1) % batch as u64 == 0 || i + 1 == n {
            out.push(Bytes::from(std::mem::take(&mut buf)));
        }
    }
    out
}

/// Runs the benchmark and prints its report.
pub fn run_ingest_bench(opts: &IngestBench) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&opts.dir).map_err(|e| e.to_string())?;
    let port = free_port();
    let (secret, hash) = crate::auth::generate().map_err(|e| e.to_string())?;
    let config = opts.dir.join("daemon.toml");
    let store = if opts.store_toml.is_empty() {
        format!(
            "[store.local]\npath = {:?}\n",
            opts.dir.join("archive").display().to_string()
        )
    } else {
        opts.store_toml.clone()
    };
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[server]\nlisten = \"127.0.0.1:{port}\"\n[batch]\nmax_age = \"10s\"\n[[auth.tokens]]\nname = \"bench\"\nsha256 = \"{hash}\"\nroles = [\"ingest\", \"admin\"]\n{store}",
            opts.dir.join("state").display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(opts.dir.join("daemon.log")).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(&exe)
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .arg("serve")
        .env("WORMVAULT_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let result = rt.block_on(async {
        client.wait_healthy(Duration::from_secs(60)).await?;
        println!("generating {} events in requests of {} ...", opts.events, opts.batch);
        let work = Arc::new(requests(opts.events, opts.batch, 1));
        let bytes: usize = work.iter().map(|b| b.len()).sum();
        // One read of /metrics per phase boundary gives the fsync count and both waits.
        let waits_before = client.waits().await.unwrap_or_default();
        let cpu_before = crate::bench::cpu_seconds_of(&pid.to_string());
        let own_before = crate::bench::cpu_seconds_of("self");
        // Phase 1: as fast as the daemon acknowledges.
        let next = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..opts.connections {
            let (client, work, next, accepted, secret) = (client.clone(), work.clone(), next.clone(), accepted.clone(), secret.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = work.get(i) else { break };
                    loop {
                        let t = Instant::now();
                        match client.post_events(&secret, body.clone()).await {
                            Ok(r) if r.status == 200 => {
                                lat.push(t.elapsed());
                                accepted.fetch_add(accepted_in(&r.body), Ordering::Relaxed);
                                break;
                            }
                            Ok(r) if r.status == 429 || r.status == 503 => tokio::time::sleep(Duration::from_millis(200)).await,
                            Ok(r) => return Err(format!("HTTP {}: {}", r.status, r.text())),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok::<_, String>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.map_err(|e| e.to_string())??);
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu_after = crate::bench::cpu_seconds_of(&pid.to_string());
        let own_after = crate::bench::cpu_seconds_of("self");
        let waits_after = client.waits().await;
        let n = accepted.load(Ordering::Relaxed);
        lat.sort();
        println!("sustained       {:.0} events/s ({:.1} MB/s) over {n} events, {} connections, {} events per request", n as f64 / secs, bytes as f64 / secs / 1e6, opts.connections, opts.batch);
        println!("  ack latency   p50 {:.1} ms, p99 {:.1} ms (per request, saturated)", percentile(&lat, 0.5).as_secs_f64() * 1e3, percentile(&lat, 0.99).as_secs_f64() * 1e3);
        if let Some(after) = waits_after {
            let fsyncs = after.fsync.since(waits_before.fsync).count;
            println!("  fsyncs        {:.0} per second ({:.0} events per fsync)", fsyncs / secs, n as f64 / fsyncs.max(1.0));
        }
        if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
            // Events acknowledged may still be sealing: this counts the work done meanwhile.
            println!("  daemon CPU    {:.1} us per event acknowledged (user + system, during the phase)", (a - b) * 1e6 / n.max(1) as f64);
        }
        if let (Some(b), Some(a)) = (own_before, own_after) {
            println!("  load gen CPU  {:.1} us per event (this process, on the same cores)", (a - b) * 1e6 / n.max(1) as f64);
        }
        if let Some(after) = waits_after {
            println!("  daemon waits  {}", after.describe_since(waits_before));
        }
        let sustained = n as f64 / secs;
        // Phase 2: paced, for latency at a given rate.
        if opts.paced_rate > 0 {
            let total = opts.paced_rate * opts.paced_seconds;
            let work = Arc::new(requests(total, opts.batch, 2));
            let interval = Duration::from_secs_f64(opts.batch as f64 / opts.paced_rate as f64);
            let waits_before = client.waits().await;
            let started = Instant::now();
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..opts.connections {
                let (client, work, next, secret) = (client.clone(), work.clone(), next.clone(), secret.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = work.get(i) else { break };
                        // Request i is due at started + i * interval.
                        let due = started + interval * i as u32;
                        tokio::time::sleep_until(due.into()).await;
                        let t = Instant::now();
                        let r = client.post_events(&secret, body.clone()).await?;
                        if r.status != 200 {
                            return Err(format!("HTTP {}: {}", r.status, r.text()));
                        }
                        lat.push(t.elapsed());
                    }
                    Ok::<_, String>(lat)
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.map_err(|e| e.to_string())??);
            }
            let secs = started.elapsed().as_secs_f64();
            lat.sort();
            println!(
                "paced           {} events/s offered, {:.0} achieved over {:.0} s: ack p50 {:.1} ms, p99 {:.1} ms",
                opts.paced_rate,
                total as f64 / secs,
                secs,
                percentile(&lat, 0.5).as_secs_f64() * 1e3,
                percentile(&lat, 0.99).as_secs_f64() * 1e3
            );
            if let (Some(before), Some(after)) = (waits_before, client.waits().await) {
                println!("  daemon waits  {}", after.describe_since(before));
            }
        }
        let r = client.flush(&secret).await?;
        if r.status != 200 {
            return Err(format!("flush: HTTP {} {}", r.status, r.text()));
        }
        Ok::<f64, String>(sustained)
    });
    let rss = crate::bench::peak_rss_of(&pid.to_string());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let sustained = result?;
    if let Some(rss) = rss {
        println!(
            "  peak RSS      {:.0} MiB (daemon)",
            rss as f64 / (1 << 20) as f64
        );
    }
    // The same events through `wormvault archive`, for the ratio.
    let file = opts.dir.join("events.ndjson");
    let mut f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
    for b in requests(opts.events, opts.batch, 1) {
        std::io::Write::write_all(&mut f, &b).map_err(|e| e.to_string())?;
    }
    drop(f);
    let archive_rate = archive_rate(&exe, &opts.dir.join("archive-run"), &file)?;
    println!(
        "ratio           {:.2} of `wormvault archive` on the same events ({:.0} events/s)",
        sustained / archive_rate,
        archive_rate
    );
    // How fast the host is running now, in the one unit the targets were set in.
    if let Some(ceiling) = crate::bench::ceiling_us_per_event(&file) {
        println!(
            "ceiling         {ceiling:.2} us per event for DESIGN.md's pipeline reproduced here (its table: {:.2}): \
             the host runs at {:.2} of the speed the targets assume",
            crate::bench::DESIGN_CEILING_US,
            crate::bench::DESIGN_CEILING_US / ceiling
        );
    }
    Ok(())
}

/// The `accepted` count of an ingest answer. Read with a typed struct rather than a
/// `serde_json::Value`: the generator shares the machine with the daemon, and building a value
/// tree of every answer (500 results each) took CPU the daemon would otherwise have had.
fn accepted_in(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Counts {
        accepted: u64,
    }
    serde_json::from_slice::<Counts>(body).map_or(0, |c| c.accepted)
}

fn archive_rate(exe: &Path, dir: &Path, file: &Path) -> Result<f64, String> {
    let config = crate::bench::local_config(dir, "archive.toml", "")?;
    let out = std::process::Command::new(exe)
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .args(["archive", "--json"])
        .arg(file)
        .env("WORMVAULT_LOG", "error")
        .output()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("archive printed no summary: {e}"))?;
    Ok(v["events"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(name: &str, within_25ms: u32, within_100ms: u32, count: u32) -> String {
        format!(
            "# TYPE {name} histogram\n\
             {name}_bucket{{le=\"0.01\"}} {}\n\
             {name}_bucket{{le=\"0.025\"}} {within_25ms}\n\
             {name}_bucket{{le=\"0.05\"}} {within_25ms}\n\
             {name}_bucket{{le=\"0.1\"}} {within_100ms}\n\
             {name}_bucket{{le=\"+Inf\"}} {count}\n\
             {name}_sum 1.5\n\
             {name}_count {count}\n",
            within_25ms / 2
        )
    }

    #[test]
    fn waits_are_read_from_the_histograms_and_counted_per_phase() {
        let text = |fsync: (u32, u32, u32), handover: (u32, u32, u32)| {
            let f = histogram("wormvault_spool_fsync_seconds", fsync.0, fsync.1, fsync.2);
            let h = histogram(
                "wormvault_seal_handover_seconds",
                handover.0,
                handover.1,
                handover.2,
            );
            format!("wormvault_ready 1\n{f}\n{h}")
        };
        let read = |t: &str| Waits {
            fsync: Wait::read(t, "wormvault_spool_fsync_seconds").unwrap(),
            handover: Wait::read(t, "wormvault_seal_handover_seconds").unwrap(),
        };
        let before = read(&text((90, 99, 100), (10, 10, 10)));
        assert_eq!(
            before.fsync,
            Wait {
                count: 100.0,
                over_25ms: 10.0,
                over_100ms: 1.0
            }
        );
        let after = read(&text((480, 494, 500), (17, 19, 20)));
        assert_eq!(
            after.describe_since(before),
            "spool fsyncs 400, 10 over 25 ms, 5 over 100 ms; seal hand-overs 10, 3 over 25 ms, 1 over 100 ms"
        );
        // A histogram not yet observed is absent from the text, not zero.
        assert_eq!(
            Wait::read("wormvault_ready 1\n", "wormvault_spool_fsync_seconds"),
            None
        );
    }
}
