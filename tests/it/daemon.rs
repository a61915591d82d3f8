//! The daemon (`wormvault serve`) as a process: HTTP semantics, crashes, outages, shutdown.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wormvault::loadgen::{Client, Reply, free_port};

use crate::util::{
    BucketKind, admin_client, create_bucket, event, python, runtime, s3_endpoint, unique,
};

/// Tokens of the fixture: one per role.
pub struct Tokens {
    pub ingest: String,
    pub admin: String,
    pub compliance: String,
    toml: String,
}

impl Tokens {
    fn new() -> Tokens {
        let mut toml = String::new();
        let mut make = |name: &str, role: &str| {
            let (secret, hash) = wormvault::auth::generate().unwrap();
            toml.push_str(&format!(
                "[[auth.tokens]]\nname = {name:?}\nsha256 = \"{hash}\"\nroles = [{role:?}]\n"
            ));
            secret
        };
        let ingest = make("capture", "ingest");
        let admin = make("ops", "admin");
        let compliance = make("examiner-desk", "compliance");
        Tokens {
            ingest,
            admin,
            compliance,
            toml,
        }
    }
}

/// A `wormvault serve` child process on a free port, with its state in `dir`.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    log_no: u32,
}

impl Daemon {
    /// Writes the config (state in `dir`, `store_toml` for the store, `extra` TOML) and starts.
    pub fn start(dir: &Path, store_toml: &str, extra: &str, tokens: Arc<Tokens>) -> Daemon {
        let port = free_port();
        let config = dir.join("daemon.toml");
        let text = format!(
            "state_dir = {:?}\n{extra}\n[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_timeout = \"20s\"\n{}\n{store_toml}",
            dir.join("state").display().to_string(),
            tokens.toml
        );
        std::fs::write(&config, text).unwrap();
        let mut d = Daemon {
            child: None,
            port,
            dir: dir.to_owned(),
            config,
            log_no: 0,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.log_no += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("daemon-{}.log", self.log_no))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wormvault"))
            .args(["--log-format", "json", "--config"])
            .arg(&self.config)
            .arg("serve")
            .env("WORMVAULT_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = self.client();
        runtime()
            .block_on(client.wait_healthy(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.port))
    }

    pub fn logs(&self) -> String {
        (1..=self.log_no)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("daemon-{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn term(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit after SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A new LocalStack lock bucket with a default retention, and its `[store]` TOML.
fn shared_bucket(rt: &tokio::runtime::Runtime, prefix: &str) -> (String, String) {
    let bucket = unique(prefix);
    rt.block_on(create_bucket(
        &admin_client(&s3_endpoint()),
        &bucket,
        BucketKind::LockWithDefault,
    ));
    let store = format!(
        "[store]\nkind = \"s3\"\n[store.s3]\nbucket = {bucket:?}\nendpoint = \"{}\"\n",
        s3_endpoint()
    );
    (bucket, store)
}

/// Runs `wormvault --config CONFIG ARGS` against LocalStack and asserts it succeeds.
fn cli_succeeds(config: &Path, args: &[&str]) {
    let out = crate::util::wormvault(config, args).output().unwrap();
    assert!(
        out.status.success(),
        "wormvault {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn local_store(dir: &Path) -> String {
    format!(
        "[store.local]\npath = {:?}\n",
        dir.join("archive").display().to_string()
    )
}

fn ndjson(events: &[String]) -> Bytes {
    Bytes::from(events.iter().map(|e| format!("{e}\n")).collect::<String>())
}

fn events(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            event(
                &format!("{tag}-{i:06}"),
                "2026-11-20T10:00:00.000001Z",
                "trade.new",
                &format!("T-{i}"),
            )
        })
        .collect()
}

fn post(client: &Client, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    runtime()
        .block_on(client.send("POST", "/v1/events", headers, body.into()))
        .unwrap()
}

/// Event ids an independent reader finds in the archive under `dir`, with repetitions.
fn archived_ids(dir: &Path) -> Vec<String> {
    let report = python("verify_archive.py", &[dir.to_str().unwrap()]);
    assert_eq!(
        report["problems"],
        serde_json::json!([]),
        "independent verifier found problems"
    );
    report["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn refusals_on_every_endpoint_are_401_or_403_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let mut d = Daemon::start(dir.path(), &local_store(dir.path()), "", tokens.clone());
    let c = d.client();
    let rt = runtime();
    let body = ndjson(&events("auth", 1));
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("/v1/events", None, 401),
        ("/v1/events", Some("Bearer wv_0000".into()), 401),
        ("/v1/events", Some(tokens.ingest.clone()), 401), // no scheme
        ("/v1/events", Some(bearer(&tokens.admin)), 403),
        ("/v1/events", Some(bearer(&tokens.compliance)), 403),
        ("/v1/flush", None, 401),
        ("/v1/flush", Some("Bearer nope".into()), 401),
        ("/v1/flush", Some(bearer(&tokens.ingest)), 403),
        ("/v1/flush", Some(bearer(&tokens.compliance)), 403),
    ];
    for (path, auth, want) in &cases {
        let mut headers = vec![("content-type", "application/x-ndjson")];
        if let Some(a) = auth {
            headers.push(("authorization", a.as_str()));
        }
        let r = rt
            .block_on(c.send("POST", path, &headers, body.clone()))
            .unwrap();
        assert_eq!(r.status, *want, "{path} {auth:?}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains("role"),
            "{}",
            r.text()
        );
        if *want == 401 {
            assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
        }
    }
    // The right roles pass.
    assert_eq!(
        post(
            &c,
            &[
                ("authorization", &bearer(&tokens.ingest)),
                ("content-type", "application/x-ndjson")
            ],
            body.clone()
        )
        .status,
        200
    );
    assert_eq!(rt.block_on(c.flush(&tokens.admin)).unwrap().status, 200);
    let refused = rt
        .block_on(c.metric("wormvault_auth_refused_total{reason=\"forbidden\"}"))
        .unwrap();
    assert_eq!(refused, 4.0);
    assert_eq!(d.term(), Some(0));
    let logs = d.logs();
    assert_eq!(
        logs.matches("Refused a request").count(),
        cases.len(),
        "{logs}"
    );
    assert!(
        logs.contains("\"path\":\"/v1/flush\"") && logs.contains("\"reason\":\"forbidden\""),
        "{logs}"
    );
}

#[test]
fn malformed_input_gets_precise_answers_and_good_events_still_land() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let mut d = Daemon::start(dir.path(), &local_store(dir.path()), "", tokens.clone());
    let c = d.client();
    let auth = format!("Bearer {}", tokens.ingest);
    let nd = [
        ("authorization", auth.as_str()),
        ("content-type", "application/x-ndjson"),
    ];
    let js = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let good = events("mal", 6);

    // A mix of good and bad lines in one request.
    let deep = events("deep", 1)[0].replace(
        "\"payload\":{",
        &format!(
            "\"payload\":{{\"n\":{}1{},",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    );
    let mut body: Vec<u8> = Vec::new();
    for line in [
        good[0].as_bytes(),
        b"{\"event_id\":\"trunc-1\",\"occurred_at\":\"2026-11-20T10:",
        good[1].as_bytes(),
        &[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x10],
        good[2].as_bytes(),
        b"{\"event_id\":\"nul\0byte\"}",
        deep.as_bytes(),
        good[3].as_bytes(),
    ] {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    let r = post(&c, &nd, body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(4), Some(4)),
        "{v}"
    );
    let results = v["results"].as_array().unwrap();
    let codes: Vec<(u64, &str)> = results
        .iter()
        .filter(|r| r["status"] == "rejected")
        .map(|r| (r["line"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (2, "malformed"),
            (4, "invalid_utf8"),
            (6, "malformed"),
            (7, "invalid_value")
        ],
        "{v}"
    );
    assert!(
        results[6]["reason"]
            .as_str()
            .unwrap()
            .contains("nested deeper"),
        "{v}"
    );
    assert_eq!(results[6]["event_id"], "deep-000000");
    assert_eq!(
        results[1]["event_id"], "trunc-1",
        "a broken event is still named"
    );
    assert!(
        results
            .iter()
            .all(|r| r["reason"].as_str().is_none_or(|s| s.len() > 10))
    );

    // A 10 MB single line: that event is too large, the request is fine.
    let big = format!(
        "{}\n{}\n",
        good[4].replace(
            "\"qty\":100",
            &format!("\"blob\":\"{}\",\"qty\":100", "x".repeat(10 << 20))
        ),
        good[5]
    );
    let r = post(&c, &nd, big);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["results"][0]["code"], "too_large");
    assert_eq!(r.json()["accepted"], 1);

    // CRLF endings and blank lines: lines are numbered as `wormvault archive` numbers them.
    let crlf = format!("\r\n  \r\n{}\r\n{{\"event_id\":\"crlf-bad\"}}\r\n", good[0]);
    let v = post(&c, &nd, crlf).json();
    assert_eq!(
        (v["duplicates"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["results"][0]["line"], 3, "{v}");
    assert_eq!(v["results"][1]["line"], 4, "{v}");
    assert_eq!(v["results"][1]["event_id"], "crlf-bad", "{v}");

    // Whole-request refusals.
    assert_eq!(post(&c, &nd, "").status, 400);
    assert_eq!(post(&c, &nd, "\n \n").status, 400);
    assert_eq!(post(&c, &js, "{not json").status, 400);
    assert_eq!(post(&c, &js, "[]").status, 400);
    let wrong = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    let r = post(&c, &wrong, good[0].clone());
    assert_eq!(r.status, 415);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson")
    );
    assert_eq!(
        post(&c, &[("authorization", auth.as_str())], good[0].clone()).status,
        415
    );
    assert_eq!(post(&c, &nd, vec![b'{'; 17 << 20]).status, 413);

    // A JSON array: per-element answers; a single JSON event.
    let array = format!(
        "[{}, {{\"event_id\":\"arr-bad\"}}, {}]",
        events("arr", 1)[0],
        good[0]
    );
    let v = post(&c, &js, array).json();
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["duplicates"].as_u64(),
            v["rejected"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["results"][1]["code"], "missing_field");
    let v = post(&c, &js, events("single", 1)[0].clone()).json();
    assert_eq!(v["accepted"], 1);

    // Still serving, and everything accepted is archived, exactly once.
    assert_eq!(runtime().block_on(c.get("/healthz")).unwrap().status, 200);
    assert_eq!(
        runtime().block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );
    // Every batch sealed went through the measured hand-over to the seal workers.
    let metric = |name: &str| runtime().block_on(c.metric(name));
    let sealed = metric("wormvault_segments_sealed_total").expect("segments sealed");
    assert!(sealed >= 1.0);
    assert_eq!(
        metric("wormvault_seal_handover_seconds_count"),
        Some(sealed)
    );
    // The store has every acknowledged event, so none is waiting, though the spool's file
    // still holds them until it is reclaimed whole.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric("wormvault_spool_oldest_event_age_seconds") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "an event is reported waiting for the store: {:?}",
            metric("wormvault_spool_oldest_event_age_seconds")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric("wormvault_spool_bytes").unwrap() > 0.0);
    // A restart replays that spool file (then reclaims it): its events are in the store, so
    // none is reported waiting (the replay must not count them).
    d.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric("wormvault_spool_oldest_event_age_seconds"),
        Some(0.0)
    );
    assert_eq!(d.term(), Some(0));
    // Refused events are logged once per request, naming the sender (the token's name).
    let logs = d.logs();
    let logged = |what: &str| {
        logs.lines()
            .any(|l| l.contains(what) && l.contains(r#""principal":"capture""#))
    };
    assert!(
        logged("events of a request; they are not archived"),
        "{logs}"
    );
    assert!(logged("Refused a request's body (400)"), "{logs}");
    let ids: BTreeSet<String> = archived_ids(&dir.path().join("archive"))
        .into_iter()
        .collect();
    let want: BTreeSet<String> = [
        "mal-000000",
        "mal-000001",
        "mal-000002",
        "mal-000003",
        "mal-000005",
        "arr-000000",
        "single-000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(ids, want);
}

/// Clients post continuously while the daemon is killed with SIGKILL at random moments and
/// restarted; every acknowledged event must be archived exactly once.
#[test]
fn a_crash_loop_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let extra = "[batch]\nmax_events = 150\nmax_age = \"300ms\"\n";
    let mut d = Daemon::start(dir.path(), &local_store(dir.path()), extra, tokens.clone());
    let port = Arc::new(std::sync::atomic::AtomicU16::new(d.port));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = runtime();
    let mut clients = Vec::new();
    for c in 0..3 {
        let (acked, stop, token, port) = (
            acked.clone(),
            stop.clone(),
            tokens.ingest.clone(),
            port.clone(),
        );
        clients.push(rt.spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let batch = events(&format!("crash{c}-{n:05}"), 20);
                n += 1;
                // Retry the same batch until it is answered, as a real client would.
                loop {
                    let client = Client::new(&format!(
                        "http://127.0.0.1:{}",
                        port.load(std::sync::atomic::Ordering::Acquire)
                    ));
                    match client.post_events(&token, ndjson(&batch)).await {
                        Ok(r) if r.status == 200 => {
                            let v = r.json();
                            let mut set = acked.lock().unwrap();
                            for res in v["results"].as_array().unwrap() {
                                assert!(
                                    matches!(
                                        res["status"].as_str(),
                                        Some("accepted" | "duplicate")
                                    ),
                                    "{res}"
                                );
                                set.insert(res["event_id"].as_str().unwrap().to_owned());
                            }
                            break;
                        }
                        _ => {
                            if stop.load(std::sync::atomic::Ordering::Acquire) {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut rng = wormvault::bench::Rng::new(Instant::now().elapsed().as_nanos() as u64 ^ 0x5eed);
    let mut kills = 0;
    while kills < 22 {
        std::thread::sleep(Duration::from_millis(80 + rng.below(400)));
        d.kill9();
        kills += 1;
        d.spawn();
        port.store(d.port, std::sync::atomic::Ordering::Release);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Release);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    // One more crash with nothing in flight, then a clean stop that uploads everything.
    d.restart();
    assert_eq!(
        rt.block_on(d.client().flush(&tokens.admin)).unwrap().json()["uploaded"],
        true,
        "{}",
        d.logs()
    );
    // What was replayed, and what waited in the outbox, is confirmed: nothing is reported
    // waiting for the store.
    let deadline = Instant::now() + Duration::from_secs(5);
    let age = || {
        rt.block_on(
            d.client()
                .metric("wormvault_spool_oldest_event_age_seconds"),
        )
    };
    while age() != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "after replay, an event is reported waiting: {:?}",
            age()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.term(), Some(0));
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 500,
        "the clients got {} events acknowledged",
        acked.len()
    );
    let ids = archived_ids(&dir.path().join("archive"));
    let unique_ids: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        ids.len(),
        unique_ids.len(),
        "an event is archived more than once"
    );
    let lost: Vec<&String> = acked.difference(&unique_ids).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not archived, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        d.logs().contains("Replayed acknowledged events"),
        "some kills must have left events to replay"
    );
}

/// A new LocalStack lock bucket reached through a proxy the test can take down: the bucket,
/// the proxy, and the `[store]` TOML with short timeouts.
fn behind_a_proxy(
    rt: &tokio::runtime::Runtime,
    tag: &str,
) -> (String, crate::proxy::Proxy, String) {
    let bucket = unique(tag);
    rt.block_on(create_bucket(
        &admin_client(&s3_endpoint()),
        &bucket,
        BucketKind::LockWithDefault,
    ));
    let upstream: std::net::SocketAddr =
        s3_endpoint().trim_start_matches("http://").parse().unwrap();
    let proxy = rt.block_on(crate::proxy::Proxy::start(upstream));
    let store = format!(
        "[store]\nkind = \"s3\"\n[store.s3]\nbucket = {bucket:?}\nendpoint = \"{}\"\nconnect_timeout = \"1s\"\noperation_timeout = \"3s\"\n",
        proxy.url()
    );
    (bucket, proxy, store)
}

/// The store goes away under load: acknowledged events stay safe, the spool fills to its limit
/// and back-pressure (429 + Retry-After) engages, and the daemon recovers by itself.
#[test]
fn a_store_outage_engages_backpressure_and_recovers() {
    let rt = runtime();
    let (bucket, proxy, store) = behind_a_proxy(&rt, "outage");
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let extra = "[batch]\nmax_events = 100\nmax_age = \"200ms\"\n[spool]\nmax_bytes = \"300KiB\"\nfile_bytes = \"32KiB\"\n[upload]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n";
    let mut d = Daemon::start(dir.path(), &store, extra, tokens.clone());
    let c = d.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(c.get("/readyz")).unwrap().status != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            rt.block_on(c.get("/readyz")).unwrap().text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut acked = BTreeSet::new();
    let mut send = |tag: String| -> (u16, Option<String>) {
        let batch = events(&tag, 50);
        let r = rt
            .block_on(c.post_events(&tokens.ingest, ndjson(&batch)))
            .unwrap();
        if r.status == 200 {
            for res in r.json()["results"].as_array().unwrap() {
                acked.insert(res["event_id"].as_str().unwrap().to_owned());
            }
        }
        (
            r.status,
            r.headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    };
    assert_eq!(send("before".into()).0, 200);
    assert_eq!(
        rt.block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );

    proxy.set_down(true);
    // Wait until uploads really fail, then fill the spool.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while rt
        .block_on(c.metric("wormvault_upload_errors_total"))
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "uploads never failed during the outage:\n{}",
            d.logs()
        );
        assert_eq!(send(format!("early{n:03}")).0, 200);
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut refused = None;
    for n in 0..200 {
        let (status, retry) = send(format!("during{n:03}"));
        if status == 429 {
            refused = Some(retry);
            break;
        }
        assert_eq!(status, 200);
    }
    let retry = refused.expect("back-pressure never engaged");
    assert!(
        retry.is_some_and(|s| s.parse::<u32>().unwrap() > 0),
        "429 carries Retry-After"
    );
    let spool = rt.block_on(c.metric("wormvault_spool_bytes")).unwrap();
    assert!(
        spool >= 300.0 * 1024.0,
        "the spool is at its limit: {spool}"
    );
    // The backlog's age grows while nothing arrives and nothing reaches the store.
    let age = || {
        rt.block_on(c.metric("wormvault_spool_oldest_event_age_seconds"))
            .unwrap()
    };
    let before = age();
    std::thread::sleep(Duration::from_millis(1500));
    let after = age();
    assert!(
        before > 0.0 && after >= before + 1.0,
        "the age of the oldest waiting event: {before} then {after}"
    );
    // Not ready while the store is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(c.get("/readyz")).unwrap().status == 200 {
        assert!(
            Instant::now() < deadline,
            "readyz stayed 200 during the outage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = send(format!("after{}", Instant::now().elapsed().as_nanos()));
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not recover:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        rt.block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );
    assert_eq!(d.term(), Some(0));
    assert!(d.logs().contains("uploads resumed"), "{}", d.logs());
    let target = crate::util::Target {
        backend: crate::util::Backend::LocalStack,
        dir: tempfile::tempdir().unwrap(),
        bucket,
        endpoint: s3_endpoint(),
        rt: runtime(),
    };
    let ids = archived_ids(&target.materialize());
    let unique_ids: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique_ids.len());
    assert!(
        acked.is_subset(&unique_ids),
        "{} acknowledged events missing",
        acked.difference(&unique_ids).count()
    );
}

#[test]
fn graceful_shutdown_under_load_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let extra = "[batch]\nmax_age = \"30s\"\n";
    let mut d = Daemon::start(dir.path(), &local_store(dir.path()), extra, tokens.clone());
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let rt = runtime();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (acked, token, client) = (acked.clone(), tokens.ingest.clone(), d.client());
        clients.push(rt.spawn(async move {
            for n in 0.. {
                let batch = events(&format!("term{c}-{n:05}"), 25);
                match client.post_events(&token, ndjson(&batch)).await {
                    Ok(r) if r.status == 200 => {
                        let mut set = acked.lock().unwrap();
                        for res in r.json()["results"].as_array().unwrap() {
                            set.insert(res["event_id"].as_str().unwrap().to_owned());
                        }
                    }
                    Ok(r) if r.status == 503 => return,
                    _ => return,
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.term(), Some(0), "{}", d.logs());
    for c in clients {
        rt.block_on(c).unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "{}", acked.len());
    // Everything acknowledged was sealed and stored before the process exited.
    let ids = archived_ids(&dir.path().join("archive"));
    let unique_ids: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique_ids.len());
    assert!(
        acked.is_subset(&unique_ids),
        "{} acknowledged events missing",
        acked.difference(&unique_ids).count()
    );
    assert!(
        d.logs()
            .contains("Everything acknowledged is sealed and in the store"),
        "{}",
        d.logs()
    );
}

/// With a certificate and key configured, the daemon speaks HTTPS only.
#[test]
fn tls_is_served_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl could not make a test certificate");
    let tokens = Arc::new(Tokens::new());
    let tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    // The fixture's [server] section gets the TLS lines through a second config layer.
    let port = free_port();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[server]\nlisten = \"127.0.0.1:{port}\"\n{tls}{}\n{}",
            dir.path().join("state").display().to_string(),
            tokens.toml,
            local_store(dir.path())
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wormvault"))
        .args(["--config"])
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .args(args)
            .output()
            .unwrap()
    };
    let url = format!("https://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = curl(&["--cacert", cert.to_str().unwrap(), &url]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
            break;
        }
        assert!(Instant::now() < deadline, "no HTTPS answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An event over HTTPS; plain HTTP on the same port gets nothing.
    let auth = format!("Authorization: Bearer {}", tokens.ingest);
    let body = events("tls", 1)[0].clone();
    let out = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &format!("https://127.0.0.1:{port}/v1/events"),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"accepted\":1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !curl(&[&format!("http://127.0.0.1:{port}/healthz")])
            .stdout
            .starts_with(b"ok")
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Two daemons with their own writer ids share one bucket: their keys and chains stay apart.
#[test]
fn daemons_sharing_a_bucket_keep_their_chains_apart() {
    let rt = runtime();
    let (bucket, store) = shared_bucket(&rt, "shared");
    let tokens = Arc::new(Tokens::new());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Daemon::start(
        da.path(),
        &store,
        "writer_id = \"ingest-a\"\n",
        tokens.clone(),
    );
    let mut b = Daemon::start(
        db.path(),
        &store,
        "writer_id = \"ingest-b\"\n",
        tokens.clone(),
    );
    for round in 0..3 {
        for (d, tag) in [(&a, "a"), (&b, "b")] {
            let r = rt
                .block_on(d.client().post_events(
                    &tokens.ingest,
                    ndjson(&events(&format!("{tag}{round}"), 30)),
                ))
                .unwrap();
            assert_eq!(r.json()["accepted"], 30);
            assert_eq!(
                rt.block_on(d.client().flush(&tokens.admin)).unwrap().json()["uploaded"],
                true
            );
        }
    }
    assert_eq!((a.term(), b.term()), (Some(0), Some(0)));
    let target = crate::util::Target {
        backend: crate::util::Backend::LocalStack,
        dir: tempfile::tempdir().unwrap(),
        bucket,
        endpoint: s3_endpoint(),
        rt: runtime(),
    };
    let report = python(
        "verify_archive.py",
        &[target.materialize().to_str().unwrap()],
    );
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["events"], 180);
    assert_eq!(
        report["writers"],
        serde_json::json!({"ingest-a": 3, "ingest-b": 3})
    );
}

/// Scheduled sweeps in the daemon find tampering, export it as metrics, store sealed reports,
/// and post the findings to the webhook.
#[test]
fn scheduled_sweeps_report_tampering_to_metrics_and_the_webhook() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = runtime();
    // A webhook receiver that keeps every body it is sent.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let got = received.clone();
    rt.spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= at + 4 + len {
                            got.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&buf[at + 4..at + 4 + len]).unwrap());
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let extra = format!("[sweep]\nquick = \"*/1 * * * * *\"\nfull = \"\"\nwebhook = \"{hook}\"\n");
    let mut d = Daemon::start(dir.path(), &local_store(dir.path()), &extra, tokens.clone());
    let c = d.client();
    post_and_flush(&c, &tokens, &events("sched", 40));
    // Tamper with the segment through the file system.
    let seg = walk(&dir.path().join("archive/segments"))
        .into_iter()
        .next()
        .unwrap();
    std::fs::set_permissions(&seg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&seg, b"changed").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook call:\n{}", d.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = received.lock().unwrap()[0].clone();
    assert!(body["errors"].as_u64().unwrap() >= 1, "{body}");
    assert!(
        body["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["class"] == "checksum_mismatch"),
        "{body}"
    );
    let findings = rt
        .block_on(c.metric("wormvault_sweep_findings{class=\"checksum_mismatch\"}"))
        .unwrap();
    assert!(findings >= 1.0);
    assert!(
        rt.block_on(c.metric("wormvault_sweep_last_success_timestamp_seconds{level=\"quick\"}"))
            .unwrap()
            > 1.7e9
    );
    assert_eq!(d.term(), Some(0));
    assert!(
        d.logs().contains("Integrity finding"),
        "findings are logged at ERROR"
    );
    let reports = walk(&dir.path().join("archive/sweeps"));
    assert!(reports.len() >= 2, "sealed sweep reports: {reports:?}");
}

/// Posts `events` (all must be acknowledged), then flushes until they are in the store.
fn post_and_flush(c: &Client, tokens: &Tokens, events: &[String]) {
    let r = runtime()
        .block_on(c.post_events(&tokens.ingest, ndjson(events)))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], events.len(), "{}", r.text());
    assert_eq!(
        runtime().block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );
}

/// Now, once at least `by` has passed since the last UTC midnight (sleeping until then).
fn past_midnight(by: Duration) -> wormvault::timestamp::Timestamp {
    let now = wormvault::timestamp::Timestamp::now();
    let since = Duration::from_micros((now.as_micros() - now.day().start().as_micros()) as u64);
    if since < by {
        std::thread::sleep(by - since);
        return wormvault::timestamp::Timestamp::now();
    }
    now
}

/// Imports `events` into `store` with `wormvault archive` as the writer `backfill`, its state
/// under `dir`.
fn backfill(dir: &Path, store: &str, events: &[String]) {
    let config = dir.join("import.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nwriter_id = \"backfill\"\n{store}",
            dir.join("import-state").display().to_string()
        ),
    )
    .unwrap();
    let file = dir.join("old.ndjson");
    std::fs::write(&file, ndjson(events)).unwrap();
    cli_succeeds(&config, &["archive", file.to_str().unwrap()]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Two daemons sharing a bucket race to anchor the same days after start: each day gets
/// exactly one anchor, and a late event posted afterwards lands in the current day.
#[test]
fn two_daemons_racing_to_anchor_leave_one_anchor_per_day() {
    let rt = runtime();
    // The daemons anchor yesterday once `delay` (2 min) has passed after midnight.
    let now = past_midnight(Duration::from_secs(180));
    let (bucket, store) = shared_bucket(&rt, "anchored");
    let keys_dir = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let k = wormvault::note::SignerKey::generate(name).unwrap();
        let path = keys_dir.path().join(name);
        std::fs::write(&path, k.to_secret_string()).unwrap();
        (path, k.verifier().to_string())
    };
    let ((path_a, pub_a), (path_b, pub_b)) = (key("daemon-a"), key("daemon-b"));
    let anchor = |path: &Path| {
        format!(
            "[anchor]\nsigning_key = {:?}\nverification_keys = [{pub_a:?}, {pub_b:?}]\norigin = \"test/anchored\"\ndelay = \"2m\"\nclose_after = \"30s\"\n",
            path.display().to_string()
        )
    };
    // Records from before anchoring was turned on, imported on their own day.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    backfill(da.path(), &store, &events("old", 20));

    let tokens = Arc::new(Tokens::new());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for (dir, writer, path) in [
            (da.path(), "ingest-a", &path_a),
            (db.path(), "ingest-b", &path_b),
        ] {
            let (tokens, store, tx) = (tokens.clone(), store.clone(), tx.clone());
            let extra = format!("writer_id = \"{writer}\"\n{}", anchor(path));
            s.spawn(move || tx.send(Daemon::start(dir, &store, &extra, tokens)).unwrap());
        }
    });
    let mut daemons: Vec<Daemon> = rx.try_iter().collect();
    assert_eq!(daemons.len(), 2);
    let admin = admin_client(&s3_endpoint());
    let yesterday = now.day().prev();
    let anchor_versions = |day: wormvault::timestamp::Day| {
        rt.block_on(
            admin
                .list_object_versions()
                .bucket(&bucket)
                .prefix(format!("anchors/dt={day}/anchor.note"))
                .send(),
        )
        .unwrap()
        .versions()
        .len()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while anchor_versions(yesterday) == 0 {
        assert!(
            Instant::now() < deadline,
            "no anchor:\n{}{}",
            daemons[0].logs(),
            daemons[1].logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut day = wormvault::timestamp::Day::parse("2026-11-20").unwrap();
    while day <= yesterday {
        assert_eq!(anchor_versions(day), 1, "one anchor for {day}");
        day = day.next();
    }
    // A late event: its day is anchored, so it goes to today's segments.
    let late = event("late-1", "2026-11-20T11:00:00Z", "trade.new", "T-late");
    let c = daemons[1].client();
    let r = rt
        .block_on(c.post_events(&tokens.ingest, ndjson(&[late])))
        .unwrap();
    assert_eq!(r.json()["accepted"], 1, "{}", r.json());
    assert_eq!(
        rt.block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );
    let listed = rt
        .block_on(
            admin
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(format!("manifests/dt={}/", now.day()))
                .send(),
        )
        .unwrap();
    assert_eq!(
        listed.contents().len(),
        1,
        "the late event is in today's batch"
    );
    for d in &mut daemons {
        assert_eq!(d.term(), Some(0));
    }
    // The whole archive, anchors included, sweeps clean.
    cli_succeeds(&daemons[1].config, &["verify", "--no-report"]);
}

/// Retrieval over HTTP: compliance only (refusals logged), NDJSON pages with a cursor, a
/// package for a case, and every retrieval recorded as an event that is itself retrievable.
#[test]
fn retrieval_is_for_compliance_only_and_is_itself_archived() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let key = wormvault::note::SignerKey::generate("retrieval-test").unwrap();
    let key_path = dir.path().join("anchor.key");
    std::fs::write(&key_path, key.to_secret_string()).unwrap();
    let extra = format!(
        "[anchor]\nsigning_key = {:?}\nclose_after = \"100000d\"\ndelay = \"100001d\"\n",
        key_path.display().to_string()
    );
    let tokens = Arc::new(Tokens::new());
    let mut d = Daemon::start(dir.path(), &local_store(dir.path()), &extra, tokens.clone());
    let c = d.client();
    let wanted: Vec<String> = (0..12)
        .map(|i| {
            event(
                &format!("w-{i:02}"),
                "2026-11-20T10:00:00Z",
                "trade.new",
                "T-9",
            )
        })
        .chain((0..5).map(|i| {
            event(
                &format!("o-{i:02}"),
                "2026-11-20T11:00:00Z",
                "trade.new",
                "T-8",
            )
        }))
        .collect();
    assert_eq!(
        rt.block_on(c.post_events(&tokens.ingest, ndjson(&wanted)))
            .unwrap()
            .json()["accepted"],
        17
    );
    assert_eq!(
        rt.block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );
    let get = |token: &str, path: &str| {
        rt.block_on(c.send(
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
            Bytes::new(),
        ))
        .unwrap()
    };
    // Only the compliance role retrieves; refusals are logged.
    assert_eq!(
        get(&tokens.ingest, "/v1/records?subject_id=T-9").status,
        403
    );
    assert_eq!(get(&tokens.admin, "/v1/records?subject_id=T-9").status, 403);
    let export = |token: &str| {
        rt.block_on(c.send(
            "POST",
            "/v1/rti/exports",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            Bytes::from(r#"{"case_id":"CASE-7","filter":{"subject_id":"T-9"}}"#),
        ))
        .unwrap()
    };
    assert_eq!(export(&tokens.ingest).status, 403);
    assert!(
        d.logs().contains("/v1/records") && d.logs().contains("/v1/rti/exports"),
        "refusals are logged"
    );
    // Pages of 5, following the cursor.
    let mut ids = Vec::new();
    let mut path = "/v1/records?subject_id=T-9&limit=5&case=CASE-7".to_string();
    loop {
        let r = get(&tokens.compliance, &path);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for line in std::str::from_utf8(&r.body).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["event"]["subject"]["id"], "T-9");
            assert!(v["proof"].as_str().unwrap().starts_with("wormvault prove "));
            ids.push(v["event"]["event_id"].as_str().unwrap().to_owned());
        }
        match r.headers.get("wormvault-next-cursor") {
            Some(cur) => {
                path = format!(
                    "/v1/records?subject_id=T-9&limit=5&case=CASE-7&cursor={}",
                    cur.to_str().unwrap()
                );
            }
            None => break,
        }
    }
    let want: Vec<String> = (0..12).map(|i| format!("w-{i:02}")).collect();
    assert_eq!(ids, want);
    // A package needs the records' day anchored: refused before, made after.
    assert_eq!(export(&tokens.compliance).status, 409);
    cli_succeeds(&d.config, &["anchor"]);
    let r = export(&tokens.compliance);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let check = wormvault::rti::verify(&r.body, &[key.verifier()]);
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.records, 12);
    // Every retrieval is an event in the archive, retrievable like any other.
    assert_eq!(
        rt.block_on(c.flush(&tokens.admin)).unwrap().json()["uploaded"],
        true
    );
    let r = get(
        &tokens.compliance,
        "/v1/records?subject_type=rti-case&subject_id=CASE-7",
    );
    let audits: Vec<serde_json::Value> = std::str::from_utf8(&r.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = audits
        .iter()
        .map(|a| a["event"]["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.iter().filter(|a| **a == "rti.query").count() >= 3,
        "{actions:?}"
    );
    assert!(actions.contains(&"rti.export"), "{actions:?}");
    assert!(
        audits
            .iter()
            .all(|a| a["event"]["actor"]["id"] == "examiner-desk")
    );
    assert_eq!(d.term(), Some(0));
}

/// The shipped alerting rules read only metrics a running daemon exports: a daemon that has
/// anchored, swept, ingested and uploaded serves every series they name (checked against a
/// live scrape, names read from the rules by an independent YAML reader), and each rule links
/// to a section of the runbook. The anchor gauge is the day just anchored.
#[test]
fn every_alert_reads_metrics_the_daemon_exports() {
    let rt = runtime();
    // Yesterday is anchored once `delay` (20 s) has passed after midnight.
    let now = past_midnight(Duration::from_secs(30));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (rules, runbook) = (
        root.join("config/alerts.yml"),
        root.join("docs/OPERATIONS.md"),
    );
    let checked = python(
        "check_alerts.py",
        &[rules.to_str().unwrap(), runbook.to_str().unwrap()],
    );
    assert_eq!(checked["problems"], serde_json::json!([]), "{checked}");
    let wanted: Vec<String> = checked["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    assert!(wanted.len() >= 12, "{checked}");
    // Every expression parses with Prometheus's own PromQL grammar; one broken on purpose
    // shows the parser does report errors.
    let tools = std::env::var("WORMVAULT_TEST_PROMQL")
        .expect("WORMVAULT_TEST_PROMQL is not set: scripts/test installs the PromQL grammar");
    let mut exprs = checked["exprs"].clone();
    exprs["(broken on purpose)"] = "sum(rate(wormvault_ready[5m]) >".into();
    let mut node = Command::new("node")
        .arg(root.join("tests/js/check_promql.mjs"))
        .arg(&tools)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    std::io::Write::write_all(
        &mut node.stdin.take().unwrap(),
        exprs.to_string().as_bytes(),
    )
    .unwrap();
    let out = node.wait_with_output().unwrap();
    assert!(out.status.success(), "check_promql.mjs failed");
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(parsed["(broken on purpose)"].is_u64(), "{parsed}");
    for alert in checked["alerts"].as_array().unwrap() {
        let alert = alert.as_str().unwrap();
        assert!(
            parsed[alert].is_null(),
            "{alert}: a PromQL syntax error at offset {}: {}",
            parsed[alert],
            exprs[alert]
        );
    }

    // Yesterday's records, imported by another writer, so the daemon anchors as it starts.
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let yesterday = now.day().prev();
    let old: Vec<String> = (0..5)
        .map(|i| {
            event(
                &format!("y-{i}"),
                &format!("{yesterday}T12:00:0{i}Z"),
                "trade.new",
                "T-1",
            )
        })
        .collect();
    backfill(dir.path(), &store, &old);

    let key = wormvault::note::SignerKey::generate("alerts-test").unwrap();
    let key_path = dir.path().join("anchor.key");
    std::fs::write(&key_path, key.to_secret_string()).unwrap();
    let extra = format!(
        "[batch]\nmax_age = \"2s\"\n[anchor]\nsigning_key = {:?}\nverification_keys = [\"{}\"]\norigin = \"test/alerts\"\ndelay = \"20s\"\nclose_after = \"5s\"\n[sweep]\nquick = \"*/1 * * * * *\"\nfull = \"*/2 * * * * *\"\n",
        key_path.display().to_string(),
        key.verifier()
    );
    let tokens = Arc::new(Tokens::new());
    let mut d = Daemon::start(dir.path(), &store, &extra, tokens.clone());
    let c = d.client();
    let metric = |name: &str| rt.block_on(c.metric(name));
    let deadline = Instant::now() + Duration::from_secs(60);
    let want_day = yesterday.start().as_micros() as f64 / 1e6;
    while metric("wormvault_anchor_last_day_timestamp_seconds") != Some(want_day) {
        assert!(
            Instant::now() < deadline,
            "yesterday was not anchored: {:?}\n{}",
            metric("wormvault_anchor_last_day_timestamp_seconds"),
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric("wormvault_anchor_delay_seconds"), Some(20.0));
    // Today's events, acknowledged and uploaded: the ingest and upload histograms.
    post_and_flush(&c, &tokens, &events("today", 10));
    // A refused token and a refused event: their counters are labelled by reason.
    assert_eq!(
        rt.block_on(c.post_events("not-a-token", ndjson(&events("nope", 1))))
            .unwrap()
            .status,
        401
    );
    let refused = rt
        .block_on(c.post_events(
            &tokens.ingest,
            Bytes::from_static(b"{\"event_id\":\"x-1\"}\n"),
        ))
        .unwrap();
    assert_eq!(refused.json()["rejected"], 1, "{}", refused.text());
    // A series of `name`, or a histogram's buckets.
    let text = |name: &str, text: &str| {
        text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']) || rest.starts_with("_bucket{"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = rt.block_on(c.get("/metrics")).unwrap().text();
        let missing: Vec<&String> = wanted.iter().filter(|m| !text(m, &scrape)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts read metrics the daemon does not export: {missing:?}\n{scrape}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(metric("wormvault_uploads_halted"), Some(0.0));
    assert_eq!(d.term(), Some(0));
}

/// An upload error that retrying cannot mend (here: a sealed segment changed on the local disk
/// while the store was away) stops uploads loudly: `/readyz` 503 with the error, the halted
/// gauge at 1, an ERROR line; the corrupt bytes never reach the store, and events are still
/// acknowledged into the spool.
#[test]
fn uploads_that_cannot_succeed_stop_loudly() {
    let rt = runtime();
    let (bucket, proxy, store) = behind_a_proxy(&rt, "halted");
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new());
    let extra = "[batch]\nmax_age = \"200ms\"\n[upload]\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n";
    let mut d = Daemon::start(dir.path(), &store, extra, tokens.clone());
    let c = d.client();
    let metric = |name: &str| rt.block_on(c.metric(name));
    assert_eq!(metric("wormvault_uploads_halted"), Some(0.0));

    proxy.set_down(true);
    let r = rt
        .block_on(c.post_events(&tokens.ingest, ndjson(&events("held", 20))))
        .unwrap();
    assert_eq!(r.json()["accepted"], 20, "{}", r.text());
    // Sealed into the outbox, and the upload failing.
    let outbox = dir.path().join("state/outbox");
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = loop {
        let sealed = walk(&outbox)
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "parquet"));
        if let Some(f) = sealed
            && metric("wormvault_upload_errors_total").unwrap_or(0.0) >= 1.0
        {
            break f;
        }
        assert!(Instant::now() < deadline, "nothing sealed:\n{}", d.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    // The disk changes one byte of the sealed segment.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    // The next attempt reads the changed file (one that read it before may still be under
    // way; with the store down it cannot succeed) and stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("wormvault_uploads_halted") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "uploads did not halt:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // With the store back, the daemon stays not ready, and says why.
    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let r = rt.block_on(c.get("/readyz")).unwrap();
        let v = r.json();
        let problems = v["problems"].to_string();
        if !problems.contains("not reachable") && problems.contains("uploads have stopped") {
            assert_eq!(r.status, 503, "{v}");
            break v;
        }
        assert!(Instant::now() < deadline, "readyz: {} {v}", r.status);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        ready["problems"]
            .to_string()
            .contains("does not match the SHA-256"),
        "{ready}"
    );
    // Still acknowledging into the spool.
    let r = rt
        .block_on(c.post_events(&tokens.ingest, ndjson(&events("after", 5))))
        .unwrap();
    assert_eq!(r.json()["accepted"], 5, "{}", r.text());
    assert_eq!(d.term(), Some(0));
    assert!(d.logs().contains("Uploads have stopped"), "{}", d.logs());
    let stored = rt
        .block_on(
            admin_client(&s3_endpoint())
                .list_objects_v2()
                .bucket(&bucket)
                .prefix("segments/")
                .send(),
        )
        .unwrap();
    assert_eq!(stored.contents().len(), 0, "the corrupt segment was stored");
}
