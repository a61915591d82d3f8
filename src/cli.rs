//! The command line. `main` parses arguments and calls [`run`]; each command returns an exit
//! code: 0 done, 1 done but something was refused or found, 2 could not do the job.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::archive::Archive;
use crate::config::{Settings, StoreSettings};
use crate::import::{ImportSummary, Outcome, UploadPatience, import};
use crate::telemetry::LogFormat;
use crate::timestamp::Day;

#[derive(Debug, Parser)]
#[command(
    name = "wormvault",
    version,
    about = "A tamper-evident, write-once archive of business events on S3 Object Lock (SEC 17a-4(f), FINRA 4511, CFTC 1.31)."
)]
pub struct Cli {
    /// Configuration file (TOML). Without one, wormvault uses the local development store under
    /// the working directory.
    #[arg(long, global = true, env = "WORMVAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive a file of NDJSON events (one event per line; `-` reads stdin). This is the
    /// backfill path, through the same pipeline as the daemon. Each refused line is reported on
    /// stderr with its line, event_id, field and reason; the exit code is 1 if any was refused.
    Archive {
        /// The NDJSON file, or `-` for stdin.
        file: PathBuf,
        /// Print the summary as JSON on stdout, and refusals as JSON lines on stderr.
        #[arg(long)]
        json: bool,
        /// Also report each duplicate (already archived with identical content).
        #[arg(long)]
        verbose: bool,
    },
    /// Run the daemon: HTTP ingest with a durable spool, batching, uploads, health and
    /// metrics. Without configuration it uses the local development store under the working
    /// directory and a development token written to the state directory.
    Serve,
    /// Create a bearer token: prints the secret (once) and the configuration entry with its hash.
    Token {
        /// Who will hold it, e.g. `trade-capture` (appears in logs and audit records).
        #[arg(long)]
        name: String,
        /// Roles: ingest, compliance, admin (repeat for several).
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<RoleArg>,
    },
    /// Upload sealed batches still waiting in the local outbox (after a store outage).
    Upload,
    /// Sweep the archive: check every object, lock, version, checksum and chain (and with
    /// `--full` every row and root). Exit 0 clean, 1 findings, 2 the sweep could not run.
    Verify {
        /// Decode every segment and recompute every leaf and root.
        #[arg(long)]
        full: bool,
        /// First UTC day (YYYY-MM-DD) to sweep.
        #[arg(long)]
        from: Option<String>,
        /// Last UTC day to sweep.
        #[arg(long)]
        to: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Do not store the report in the archive (for read-only credentials).
        #[arg(long)]
        no_report: bool,
        /// Objects checked at once (default: the number of cores plus one, so that reading
        /// one object overlaps checking the others).
        #[arg(long)]
        parallelism: Option<usize>,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Benchmarks (see docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Ingest,
    Compliance,
    Admin,
}

impl From<RoleArg> for crate::auth::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Ingest => crate::auth::Role::Ingest,
            RoleArg::Compliance => crate::auth::Role::Compliance,
            RoleArg::Admin => crate::auth::Role::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved settings, or the precise errors (exit 2).
    Check,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Generate realistic events as NDJSON.
    Gen {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long)]
        out: PathBuf,
        /// First UTC day of `occurred_at`.
        #[arg(long, default_value = "2026-11-02")]
        start: String,
        /// Number of days the events spread over.
        #[arg(long, default_value_t = 3)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Start the daemon on a fresh local store (or the given S3 settings), load it over HTTP,
    /// and report sustained events/s, acknowledgement latency, fsyncs and peak RSS.
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Events per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Events per second of the paced latency phase (0 skips it).
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Length of the paced phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Archive to this S3 endpoint (with --bucket) instead of a local store.
        #[arg(long)]
        s3_endpoint: Option<String>,
        #[arg(long)]
        bucket: Option<String>,
        /// Work directory (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a local archive of at least `--gb` GB of segments (once, in `--dir`), then time a
    /// quick and a full `wormvault verify` of it: GB/s, ratio to the ceilings, peak RSS.
    Sweep {
        #[arg(long, default_value_t = 1.0)]
        gb: f64,
        /// Work directory, kept between runs (the archive is built only once).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Single-thread cost of each pipeline stage, in microseconds per event.
    Stages {
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// Generate events, archive them into a fresh local store, print throughput and peak RSS.
    Archive {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Work directory (default: a new temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init(cli.log_format);
    match cli.command {
        Command::Config(ConfigCommand::Check) => match load_settings(cli.config.as_deref()) {
            Ok(s) => {
                print!("{}", s.describe());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Archive {
            file,
            json,
            verbose,
        } => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            archive_cmd(settings, file, json, verbose)
        }
        Command::Upload => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            upload_cmd(settings)
        }
        Command::Serve => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            let rt = runtime();
            match rt.block_on(crate::server::serve(settings, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "The daemon stopped.");
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Token { name, roles } => token_cmd(&name, &roles),
        Command::Verify {
            full,
            from,
            to,
            json,
            no_report,
            parallelism,
        } => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            let parallelism = parallelism.unwrap_or_else(|| cores() + 1);
            verify_cmd(settings, full, from, to, json, no_report, parallelism)
        }
        Command::Bench(BenchCommand::Gen {
            events,
            out,
            start,
            days,
            seed,
        }) => {
            let Some(start) = Day::parse(&start) else {
                eprintln!("error: --start must be a day like 2026-11-02");
                return ExitCode::from(2);
            };
            match crate::bench::generate(&out, events, start, days, seed) {
                Ok(bytes) => {
                    println!(
                        "wrote {events} events ({bytes} bytes, {} bytes/event) to {}",
                        bytes / events.max(1),
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: writing {}: {e}", out.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(BenchCommand::Archive { events, dir }) => bench_archive(events, dir),
        Command::Bench(BenchCommand::Ingest {
            events,
            connections,
            batch,
            rate,
            seconds,
            s3_endpoint,
            bucket,
            dir,
        }) => {
            let tmp = tempfile::TempDir::new().expect("temporary directory");
            let store_toml = match (s3_endpoint, bucket) {
                (Some(endpoint), Some(bucket)) => {
                    format!(
                        "[store]\nkind = \"s3\"\n[store.s3]\nbucket = {bucket:?}\nendpoint = {endpoint:?}\n"
                    )
                }
                (None, None) => String::new(),
                _ => {
                    eprintln!("error: --s3-endpoint and --bucket go together");
                    return ExitCode::from(2);
                }
            };
            let opts = crate::loadgen::IngestBench {
                events,
                connections,
                batch,
                paced_rate: rate,
                paced_seconds: seconds,
                store_toml,
                dir: dir.unwrap_or_else(|| tmp.path().to_owned()),
            };
            match crate::loadgen::run_ingest_bench(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(BenchCommand::Sweep { gb, dir }) => {
            match crate::bench::sweep_bench(gb, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(BenchCommand::Stages { events }) => {
            println!("single-thread cost per event over {events} generated events (best of 3):");
            let mut total = 0.0;
            for (i, (stage, us)) in crate::bench::stage_costs(events, 3).into_iter().enumerate() {
                if i > 0 {
                    total += us;
                }
                println!("  {us:6.2} us  {stage}");
            }
            println!("  {total:6.2} us  parse_event + Record::new + Merkle + write_segment");
            println!(
                "  DESIGN.md budget: 2.86 us per event for parse + leaf hash + Parquet + Merkle (0.35 M/s per core)"
            );
            ExitCode::SUCCESS
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("Received SIGTERM."),
        _ = int.recv() => tracing::info!("Received SIGINT."),
    }
}

fn verify_cmd(
    settings: Settings,
    full: bool,
    from: Option<String>,
    to: Option<String>,
    json: bool,
    no_report: bool,
    parallelism: usize,
) -> ExitCode {
    let day = |s: Option<String>, what: &str| -> Result<Option<Day>, ExitCode> {
        match s {
            None => Ok(None),
            Some(s) => Day::parse(&s).map(Some).ok_or_else(|| {
                eprintln!("error: --{what} must be a day like 2026-11-20, not {s:?}");
                ExitCode::from(2)
            }),
        }
    };
    let (from, to) = match (day(from, "from"), day(to, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    // Hashing and decoding run on the blocking pool: one thread per core keeps them from
    // competing for the CPU (and each thread's allocator heap out of the peak RSS), while
    // `parallelism` objects stay in flight so reads overlap the CPU work.
    let rt = runtime_with(cores());
    let result = rt.block_on(async {
        let store = crate::archive::open_store(&settings).await.map_err(|e| e.to_string())?;
        let sweeper = crate::sweep::Sweeper { store, layout: settings.layout.clone(), retention: settings.retention.clone() };
        let opts = crate::sweep::SweepOptions {
            level: if full { crate::sweep::Level::Full } else { crate::sweep::Level::Quick },
            from,
            to,
            days: None,
            parallelism,
        };
        let report = sweeper.run(&opts).await.map_err(|e| e.to_string())?;
        let stored = if no_report {
            Vec::new()
        } else {
            sweeper.store_report(&report).await.map_err(|e| {
                format!("the sweep ran but its report could not be stored ({e}); with read-only credentials use --no-report")
            })?
        };
        Ok::<_, String>((report, stored))
    });
    let (report, stored) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::sweep::log_findings(&report);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    } else {
        print!("{}", report.summary());
        for k in &stored {
            println!("report stored sealed at {k}");
        }
    }
    if report.errors() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn token_cmd(name: &str, roles: &[RoleArg]) -> ExitCode {
    let (secret, hash) = match crate::auth::generate() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: reading random bytes: {e}");
            return ExitCode::from(2);
        }
    };
    let roles: Vec<String> = roles
        .iter()
        .map(|r| format!("{:?}", crate::auth::Role::from(*r).as_str()))
        .collect();
    println!("# The token for {name:?}; it is shown once and not stored anywhere:");
    println!("#   {secret}");
    println!("# Add this to the daemon's configuration (it holds only the hash):");
    println!("[[auth.tokens]]");
    println!("name = {name:?}");
    println!("sha256 = \"{hash}\"");
    println!("roles = [{}]", roles.join(", "));
    ExitCode::SUCCESS
}

fn load_settings(path: Option<&std::path::Path>) -> Result<Settings, ExitCode> {
    Settings::load(path, std::env::vars()).map_err(|e| {
        eprintln!("error: configuration: {e}");
        ExitCode::from(2)
    })
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn runtime() -> tokio::runtime::Runtime {
    runtime_with(BLOCKING_THREADS)
}

/// Threads for blocking work (local-store file I/O, parsing, hashing and decoding). Tokio's
/// default of 512 suits blocking network clients; here every blocking task is CPU or local
/// disk, so more threads than this only add per-thread allocator heaps (a sweep with the
/// default peaked at 86 threads and 640 MiB).
const BLOCKING_THREADS: usize = 8;

fn runtime_with(blocking_threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(blocking_threads.max(2))
        .thread_name("wormvault-io")
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn open_archive(rt: &tokio::runtime::Runtime, settings: Settings) -> Result<Archive, ExitCode> {
    rt.block_on(Archive::open(settings)).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn archive_cmd(settings: Settings, file: PathBuf, json: bool, verbose: bool) -> ExitCode {
    let rt = runtime();
    let archive = match open_archive(&rt, settings) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let input: Box<dyn Read + Send> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        match std::fs::File::open(&file) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("error: cannot open {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    };
    let mut on_outcome = |o: Outcome| match o {
        Outcome::Rejected(r) if json => {
            eprintln!("{}", serde_json::to_string(&r).expect("serializable"))
        }
        Outcome::Rejected(r) => eprintln!("rejected: {r}"),
        Outcome::Noted {
            line,
            event_id,
            note,
        } => eprintln!("note: line {line} (event_id {event_id:?}): {note}"),
        Outcome::Duplicate { line, event_id } if verbose => {
            eprintln!(
                "duplicate: line {line} (event_id {event_id:?}) was already archived with identical content"
            )
        }
        Outcome::Duplicate { .. } => {}
    };
    let summary = match import(
        &archive,
        input,
        rt.handle(),
        UploadPatience::default(),
        &mut on_outcome,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", summary_json(&archive, &file, &summary));
    } else {
        print_summary(&archive, &file, &summary);
    }
    if summary.pending_uploads > 0 {
        ExitCode::from(2)
    } else if summary.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn upload_cmd(settings: Settings) -> ExitCode {
    let rt = runtime();
    let archive = match open_archive(&rt, settings) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (done, result) = rt.block_on(archive.uploader().drain());
    for u in &done {
        println!(
            "uploaded {} ({} events) and {}",
            u.segment_key, u.entry.info.n_events, u.manifest_key
        );
    }
    match result {
        Ok(()) => {
            println!("the outbox is empty");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn store_words(archive: &Archive) -> String {
    match &archive.settings.store {
        StoreSettings::Local { .. } => format!("the {}", archive.store.describe()),
        StoreSettings::S3(_) => archive.store.describe(),
    }
}

fn print_summary(archive: &Archive, file: &std::path::Path, s: &ImportSummary) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{} of {} events from {} archived into {}",
        s.accepted,
        s.events,
        file.display(),
        store_words(archive)
    );
    println!(
        "  writer {} | {} accepted, {} duplicates, {} rejected | {:.2} s, {:.0} events/s, {:.1} MB/s",
        archive.writer,
        s.accepted,
        s.duplicates,
        s.rejected,
        secs,
        s.events as f64 / secs,
        s.bytes as f64 / secs / 1e6
    );
    if !s.uploaded.is_empty() {
        println!(
            "  written (each segment with its manifest under {}):",
            archive.settings.layout.manifests_prefix()
        );
        for u in &s.uploaded {
            let i = &u.entry.info;
            println!(
                "    {}  {} events  seq {}-{}  {}  locked until {}  root {}",
                u.segment_key,
                i.n_events,
                i.first_seq,
                i.last_seq,
                i.retention_class,
                &i.retain_until.to_string()[..10],
                &hex::encode(i.merkle_root)[..16]
            );
        }
    }
    if s.pending_uploads > 0 {
        println!(
            "  {} sealed batches wait in the outbox under {} because the store is unreachable ({}); \
             run `wormvault upload` when it is back",
            s.pending_uploads,
            archive.state.dir().display(),
            s.upload_error.as_deref().unwrap_or("unknown error")
        );
    }
}

fn summary_json(archive: &Archive, file: &std::path::Path, s: &ImportSummary) -> String {
    let segments: Vec<serde_json::Value> = s
        .uploaded
        .iter()
        .map(|u| {
            serde_json::json!({
                "segment": u.segment_key,
                "manifest": u.manifest_key,
                "manifest_sha256": u.manifest_sha256,
                "info": u.entry.info,
            })
        })
        .collect();
    serde_json::json!({
        "file": file.display().to_string(),
        "store": archive.store.describe(),
        "writer": archive.writer,
        "events": s.events,
        "accepted": s.accepted,
        "duplicates": s.duplicates,
        "rejected": s.rejected,
        "bytes": s.bytes,
        "seconds": s.elapsed.as_secs_f64(),
        "segments": segments,
        "pending_uploads": s.pending_uploads,
        "upload_error": s.upload_error,
    })
    .to_string()
}

fn bench_archive(events: u64, dir: Option<PathBuf>) -> ExitCode {
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = match tempfile::TempDir::new() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: temporary directory: {e}");
                    return ExitCode::from(2);
                }
            };
            tmp.path().to_owned()
        }
    };
    let _ = std::fs::create_dir_all(&dir);
    let input = dir.join("events.ndjson");
    let start = Day::parse("2026-11-02").expect("valid");
    let bytes = match crate::bench::generate(&input, events, start, 3, 42) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: generating events: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "generated {events} events, {bytes} bytes ({} bytes/event)",
        bytes / events.max(1)
    );
    let text = format!(
        "state_dir = {:?}\n[store.local]\npath = {:?}\n",
        dir.join("state").display().to_string(),
        dir.join("archive").display().to_string()
    );
    let settings = match Settings::from_toml("bench", &text, std::iter::empty()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = runtime();
    let archive = match open_archive(&rt, settings) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let file = match std::fs::File::open(&input) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::bench::reset_peak_rss();
    let summary = match import(
        &archive,
        Box::new(file),
        rt.handle(),
        UploadPatience::default(),
        &mut |_| {},
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let secs = summary.elapsed.as_secs_f64();
    let rate = summary.events as f64 / secs;
    let cores = cores();
    let archive_bytes: u64 = summary.uploaded.iter().map(|u| u.entry.size).sum();
    println!(
        "archived {} events in {secs:.2} s into {} segments ({archive_bytes} bytes, {} bytes/event)",
        summary.accepted,
        summary.uploaded.len(),
        archive_bytes / summary.accepted.max(1)
    );
    println!(
        "throughput      {rate:.0} events/s, {:.1} MB/s of JSON",
        bytes as f64 / secs / 1e6
    );
    println!(
        "ratio           {:.2} of the single-thread ceiling (0.35 M events/s per core); {:.2} per core on {cores} cores",
        rate / crate::bench::PIPELINE_CEILING_PER_CORE,
        rate / crate::bench::PIPELINE_CEILING_PER_CORE / cores as f64
    );
    match crate::bench::peak_rss_bytes() {
        Some(rss) => println!("peak RSS        {:.0} MiB", rss as f64 / (1 << 20) as f64),
        None => println!("peak RSS        (not reported by this platform)"),
    }
    if summary.accepted != events {
        eprintln!(
            "error: {} of {events} events were accepted",
            summary.accepted
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
