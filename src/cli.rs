//! The command line. `main` parses arguments and calls [`run`]; each command returns an exit
//! code: 0 done, 1 done but something was refused or found, 2 could not do the job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::archive::Archive;
use crate::config::{Settings, StoreSettings};
use crate::import::{ImportSummary, Input, Outcome, UploadPatience, import};
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
        /// The NDJSON file, or `-` for stdin. A regular file is read through memory mappings
        /// and must not be truncated or rewritten during the import; a file that may still
        /// change is read safely as stdin (`- < FILE`).
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
        #[arg(long, value_parser = day_arg)]
        from: Option<Day>,
        /// Last UTC day to sweep.
        #[arg(long, value_parser = day_arg)]
        to: Option<Day>,
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
    /// Create an Ed25519 key for signing anchors: writes the secret key to a new file (mode
    /// 0600) and prints the public key for `anchor.verification_keys`.
    Keygen {
        /// The key's name, e.g. `archive.example-bd.com/wormvault-2026` (no spaces or '+').
        #[arg(long)]
        name: String,
        /// The file to create for the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Anchor every day not yet anchored up to DAY (default: yesterday, UTC): compute the
    /// daily root over the day's manifests, sign it, store it sealed (and mirror it).
    Anchor {
        /// The last day to anchor (YYYY-MM-DD); it must be over.
        #[arg(long, value_parser = day_arg)]
        day: Option<Day>,
    },
    /// Write the offline proof bundle of one event (JSON): the event, its inclusion in its
    /// segment, the manifest, its inclusion in the daily root, the signed anchor, the key.
    Prove {
        event_id: String,
        /// Look from this UTC day on (the day the event occurred): faster on large archives.
        #[arg(long, value_parser = day_arg)]
        day: Option<Day>,
        /// Write the bundle here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof bundle with no access to the archive. Exit 0 valid, 1 not valid.
    VerifyProof {
        file: PathBuf,
        /// Require the anchor to be signed by this public key (`name+keyid+base64`); repeat for
        /// several. Without it, the bundle's own key is used and printed for comparison.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Record indexes (docs/FORMAT.md §13).
    #[command(subcommand)]
    Index(IndexCommand),
    /// Retrieval for Responses to Inquiry.
    #[command(subcommand)]
    Rti(RtiCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The archive bucket.
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Benchmarks (see docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

impl Command {
    /// Whether the command reuses its freed memory over and over: the ingest pipeline (the
    /// daemon, an import) batch after batch, and a sweep segment after segment; and the
    /// benchmarks that run an import or a sweep in their own process, so that they measure
    /// what the commands do.
    pub fn reuses_freed_memory(&self) -> bool {
        matches!(
            self,
            Command::Serve
                | Command::Archive { .. }
                | Command::Upload
                | Command::Verify { .. }
                | Command::Bench(BenchCommand::Archive { .. } | BenchCommand::Sweep { .. })
        )
    }
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
pub enum IndexCommand {
    /// Build the record index of every anchored day that lacks one (or of DAY), from the
    /// day's segments; an index already stored must come out byte for byte the same.
    Rebuild {
        /// The day (YYYY-MM-DD).
        #[arg(long, value_parser = day_arg)]
        day: Option<Day>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RtiCommand {
    /// Print the matching records as NDJSON, each with where it is and how to prove it.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// The case the retrieval is for (recorded in the archive with the retrieval).
        #[arg(long, default_value = "ad-hoc")]
        case: String,
        /// Who asks (recorded with the retrieval).
        #[arg(long, env = "USER", default_value = "unknown")]
        requester: String,
    },
    /// Write a self-verifying package (a zipped BagIt bag) of the matching records for a case:
    /// CSV, Parquet and JSONL, one proof per record, the manifests, anchors and keys, a README.
    Export {
        /// The case id (names the bag's folder).
        #[arg(long)]
        case: String,
        /// Who asked (recorded in the package).
        #[arg(long, env = "USER", default_value = "unknown")]
        requester: String,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a package with no access to the archive. Exit 0 valid, 1 not valid.
    Verify {
        file: PathBuf,
        /// Require the package and anchors to be signed by this key (repeat for several).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
}

pub use crate::retrieve::FilterParams as FilterArgs;

#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Check that the bucket is fit for a WORM archive: versioning, Object Lock, a COMPLIANCE
    /// default retention of at least `[upload] min_default_retention_days`, and, proved on a
    /// canary written under `preflight/`, that these credentials cannot delete a locked
    /// version. Exit 0 fit, 1 not fit (each failing property named), 2 the check could not run.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
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
        #[arg(long, default_value = "2026-11-02", value_parser = day_arg)]
        start: Day,
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
        /// Anchor the archive's days (and so build their record indexes) before timing: a
        /// full sweep then also checks every anchor and index. Use its own `--dir`.
        #[arg(long)]
        anchored: bool,
    },
    /// Build a local archive of `--events` over `--days` (once, in `--dir`), anchor and index
    /// it, then time one subject's query (latency, bytes read), the same query in DuckDB, and
    /// an export of about 10,000 records.
    Rti {
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Work directory, kept between runs (the archive is built only once).
        #[arg(long)]
        dir: PathBuf,
        /// A Python with duckdb, for the comparison (default: the test tools' venv).
        #[arg(long, default_value = ".cache/tools-venv/bin/python")]
        python: PathBuf,
    },
    /// How long appending a group to a file and `fdatasync`ing it takes in `--dir` (where
    /// `state_dir`, the spool, would live): alone, then beside segment-sized writes. Every
    /// acknowledgement waits for one of these. Writes only in a temporary directory there.
    Fsync {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Bytes per group commit (the default: about 500 spooled events of 640 bytes).
        #[arg(long, default_value_t = 320 << 10)]
        group_bytes: usize,
        /// Group commits per second (the default with --group-bytes: a spool's traffic at
        /// 50,000 events/s).
        #[arg(long, default_value_t = 100)]
        per_second: u32,
        /// Length of each phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Segment traffic beside the second phase, MB/s (8 MiB files, each fsynced).
        #[arg(long, default_value_t = 30.0)]
        segments_mb_per_s: f64,
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
        Command::Bucket(BucketCommand::Check { json }) => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            bucket_check_cmd(&settings, json)
        }
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
        Command::Keygen { name, out } => keygen_cmd(&name, &out),
        Command::Anchor { day } => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            anchor_cmd(settings, day)
        }
        Command::Prove { event_id, day, out } => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            prove_cmd(settings, &event_id, day, out)
        }
        Command::VerifyProof { file, keys } => verify_proof_cmd(&file, &keys),
        Command::Index(IndexCommand::Rebuild { day }) => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            index_rebuild_cmd(settings, day)
        }
        Command::Rti(RtiCommand::Export {
            case,
            requester,
            filter,
            out,
        }) => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            rti_export_cmd(settings, case, requester, &filter, &out)
        }
        Command::Rti(RtiCommand::Verify { file, keys }) => rti_verify_cmd(&file, &keys),
        Command::Rti(RtiCommand::Query {
            filter,
            case,
            requester,
        }) => {
            let Ok(settings) = load_settings(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            rti_query_cmd(settings, &filter, &case, &requester)
        }
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
        }) => match crate::bench::generate(&out, events, start, days, seed) {
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
        },
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
                Err(e) => fail(e),
            }
        }
        Command::Bench(BenchCommand::Rti {
            events,
            days,
            dir,
            python,
        }) => match crate::bench::rti_bench(events, days, &dir, &python) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Bench(BenchCommand::Sweep { gb, dir, anchored }) => {
            match crate::bench::sweep_bench(gb, &dir, anchored) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Bench(BenchCommand::Fsync {
            dir,
            group_bytes,
            per_second,
            seconds,
            segments_mb_per_s,
        }) => {
            let load = crate::bench::FsyncLoad {
                group_bytes,
                interval: std::time::Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))),
                phase: std::time::Duration::from_secs_f64(seconds.max(0.0)),
                background_bytes_per_s: (segments_mb_per_s.max(0.0) * 1e6) as u64,
                file_bytes: crate::config::DEFAULT_SPOOL_FILE_BYTES,
            };
            println!(
                "append + fdatasync in {}: {group_bytes}-byte groups, {per_second} per second, {seconds} s per phase",
                dir.display()
            );
            match crate::bench::fsync_bench(&dir, load) {
                Ok((quiet, busy)) => {
                    let beside = format!(
                        "beside {:.0} MB/s of segments",
                        busy.segment_bytes as f64 / 1e6 / seconds.max(f64::MIN_POSITIVE)
                    );
                    println!("  {:<32}{}", "alone", quiet.describe());
                    println!("  {beside:<32}{}", busy.describe());
                    println!(
                        "  every acknowledgement of the daemon waits for one of these (docs/DEPLOY.md: the spool's volume)"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("bench fsync in {}: {e}", dir.display())),
            }
        }
        Command::Bench(BenchCommand::Stages { events }) => {
            println!("single-thread cost per event over {events} generated events (best of 3):");
            let mut stages = crate::bench::stage_costs(events, 3);
            let (ceiling_stage, ceiling) = stages.pop().expect("the ceiling is measured last");
            let mut total = 0.0;
            for (i, (stage, us)) in stages.into_iter().enumerate() {
                if i > 0 {
                    total += us;
                }
                println!("  {us:6.2} us  {stage}");
            }
            println!("  {total:6.2} us  parse_event + Record::new + Merkle + write_segment");
            println!("  {ceiling:6.2} us  {ceiling_stage}");
            println!(
                "  DESIGN.md budget: {:.2} us per event for parse + leaf hash + Parquet + Merkle (0.35 M/s per core); \
                 the archive's stages cost {:.1} times the reproduced ceiling",
                crate::bench::DESIGN_CEILING_US,
                total / ceiling
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

fn bucket_check_cmd(settings: &Settings, json: bool) -> ExitCode {
    let who = settings
        .writer_id
        .clone()
        .unwrap_or_else(|| crate::layout::WriterId::parse("cli").expect("a valid writer id"));
    let result = runtime().block_on(async {
        let store = crate::archive::open_store(settings)
            .await
            .map_err(|e| e.to_string())?;
        crate::bucket::check_configured(settings, &*store, &who)
            .await
            .map_err(|e| format!("the bucket could not be checked: {e}"))
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    print_report(json, &report, &report.summary());
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn verify_cmd(
    settings: Settings,
    full: bool,
    from: Option<Day>,
    to: Option<Day>,
    json: bool,
    no_report: bool,
    parallelism: usize,
) -> ExitCode {
    // Hashing and decoding run on the blocking pool: one thread per core keeps them from
    // competing for the CPU (and each thread's allocator heap out of the peak RSS), while
    // `parallelism` objects stay in flight so reads overlap the CPU work.
    let rt = runtime_with(cores());
    let result = rt.block_on(async {
        let store = crate::archive::open_store(&settings).await.map_err(|e| e.to_string())?;
        let sweeper = crate::sweep::Sweeper::from_settings(&settings, store).await?;
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
        Err(e) => return fail(e),
    };
    crate::sweep::log_findings(&report);
    print_report(json, &report, &report.summary());
    if !json {
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

fn keygen_cmd(name: &str, out: &std::path::Path) -> ExitCode {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = match crate::note::SignerKey::generate(name) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", key.to_secret_string()).as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        eprintln!(
            "error: creating {}: {e} (an existing key file is never replaced)",
            out.display()
        );
        return ExitCode::from(2);
    }
    println!(
        "# The signing key is in {} (keep it secret; only the daemon reads it).",
        out.display()
    );
    println!("# Its public key, for every verifier and for the configuration:");
    println!("[anchor]");
    println!("signing_key = {:?}", out.display().to_string());
    println!("verification_keys = [{:?}]", key.verifier().to_string());
    ExitCode::SUCCESS
}

fn anchor_cmd(settings: Settings, day: Option<Day>) -> ExitCode {
    let day = day.unwrap_or_else(|| crate::timestamp::Timestamp::now().day().prev());
    let rt = runtime();
    let result = rt.block_on(async {
        let store = crate::archive::open_store(&settings)
            .await
            .map_err(|e| e.to_string())?;
        let anchorer = crate::anchor::Anchorer::from_settings(&settings, store)
            .await?
            .ok_or(
                "anchoring is not configured: add an [anchor] section (see `wormvault keygen`)",
            )?;
        anchorer
            .anchor_through(day)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(done) => {
            for a in done {
                println!(
                    "{} {} {}: {} manifests, root {}",
                    a.day,
                    if a.created {
                        "anchored"
                    } else {
                        "already anchored"
                    },
                    a.key,
                    a.size,
                    hex::encode(a.root)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn prove_cmd(
    settings: Settings,
    event_id: &str,
    near: Option<Day>,
    out: Option<PathBuf>,
) -> ExitCode {
    let Some(anchor) = &settings.anchor else {
        eprintln!("error: anchoring is not configured ([anchor]); a proof needs the day's anchor");
        return ExitCode::from(2);
    };
    let keys = anchor.accepted_keys();
    let rt = runtime();
    let result = rt.block_on(async {
        let store = crate::archive::open_store(&settings)
            .await
            .map_err(|e| e.to_string())?;
        crate::proof::prove(&store, &settings.layout, &keys, event_id, near).await
    });
    let bundle = match result {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let json = serde_json::to_string_pretty(&bundle).expect("serializable") + "\n";
    match out {
        None => print!("{json}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, json) {
                eprintln!("error: writing {}: {e}", path.display());
                return ExitCode::from(2);
            }
            eprintln!(
                "wrote the proof of {event_id} ({} on {}) to {}",
                bundle.segment_key,
                bundle.anchor_key,
                path.display()
            );
        }
    }
    ExitCode::SUCCESS
}

fn parse_keys(keys: &[String]) -> Result<Vec<crate::note::VerifierKey>, ExitCode> {
    keys.iter()
        .map(|k| {
            crate::note::VerifierKey::parse(k).map_err(|e| {
                eprintln!("error: --key {k:?}: {e}");
                ExitCode::from(2)
            })
        })
        .collect()
}

fn rti_export_cmd(
    settings: Settings,
    case: String,
    requester: String,
    filter: &FilterArgs,
    out: &std::path::Path,
) -> ExitCode {
    let filter = match filter.to_filter() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let Some(anchor) = &settings.anchor else {
        eprintln!(
            "error: anchoring is not configured ([anchor]); packages prove records through anchors"
        );
        return ExitCode::from(2);
    };
    let signer = match anchor.load_signer() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e} (the package is signed with the anchor key)");
            return ExitCode::from(2);
        }
    };
    let keys = anchor.accepted_keys();
    if let Err(e) = crate::rti::check_case_id(&case) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let request = crate::rti::Request {
        case_id: case,
        requester,
        filter,
    };
    let rt = runtime();
    let store = match cli_retrieval(
        &rt,
        &settings,
        "rti.export",
        &request.requester,
        &request.case_id,
        &request.filter,
    ) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = rt.block_on(crate::rti::export(
        &store,
        &settings.layout,
        &keys,
        &signer,
        &request,
    ));
    match result {
        Ok(p) => {
            if let Err(e) = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &p.zip))
            {
                eprintln!("error: writing {}: {e}", out.display());
                return ExitCode::from(2);
            }
            println!(
                "wrote {} records for case {} to {} ({} bytes)",
                p.records,
                request.case_id,
                out.display(),
                p.zip.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn rti_verify_cmd(file: &std::path::Path, keys: &[String]) -> ExitCode {
    let pinned = match parse_keys(keys) {
        Ok(k) => k,
        Err(code) => return code,
    };
    match crate::rti::verify_file(file, &pinned) {
        Ok(c) if c.problems.is_empty() => {
            println!(
                "VALID: case {}: {} records, every one proven up to a signed daily anchor and matching the request; package signed by {}",
                c.case_id, c.records, c.signed_by
            );
            if pinned.is_empty() {
                println!(
                    "       (no --key given: compare the key above with the firm's published key)"
                );
            }
            ExitCode::SUCCESS
        }
        Ok(c) => {
            println!("INVALID: case {}: {} problems", c.case_id, c.problems.len());
            for p in &c.problems {
                println!("  {p}");
            }
            ExitCode::from(1)
        }
        Err(e) => fail(e),
    }
}

fn verify_proof_cmd(file: &std::path::Path, keys: &[String]) -> ExitCode {
    let pinned = match parse_keys(keys) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let bundle: crate::proof::ProofBundle = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not a proof bundle: {e}")))
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match crate::proof::verify(&bundle, &pinned) {
        Ok(p) => {
            println!(
                "VALID: event {} (occurred {}) is in {}",
                p.event_id, p.occurred_at, p.segment_key
            );
            println!(
                "       whose manifest is in the daily root of {} signed by {}",
                p.day, p.signed_by
            );
            println!(
                "       origin {}{}",
                p.origin,
                if p.late {
                    "; archived late, on a day after it occurred"
                } else {
                    ""
                }
            );
            if pinned.is_empty() {
                println!(
                    "       (no --key given: compare the key above with the firm's published key)"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("INVALID: {e}");
            ExitCode::from(1)
        }
    }
}

fn index_rebuild_cmd(settings: Settings, day: Option<Day>) -> ExitCode {
    let rt = runtime();
    let result = rt.block_on(async {
        let store = crate::archive::open_store(&settings)
            .await
            .map_err(|e| e.to_string())?;
        let days: Vec<Day> = match day {
            Some(d) => vec![d],
            None => crate::anchor::anchored_days(&store, &settings.layout)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect(),
        };
        for d in days {
            let until = settings
                .retention
                .longest_from(d.next().start())
                .ceil_to_second();
            let (built, written) =
                crate::retrieve::rebuild_index(&store, &settings.layout, until, d).await?;
            println!(
                "{d} {} {}: {} events in {} segments",
                if written {
                    "indexed"
                } else {
                    "index confirmed"
                },
                settings.layout.record_index(d),
                built.events,
                built.segments
            );
        }
        Ok::<_, String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Archives the event that records a retrieval from the command line (`action` of `filter`
/// for `case`, asked by `requester`), through this configuration's writer, before anything is
/// retrieved; returns the archive's store to retrieve from. Nothing is retrieved if the
/// retrieval cannot be recorded.
fn cli_retrieval(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    action: &str,
    requester: &str,
    case: &str,
    filter: &crate::retrieve::Filter,
) -> Result<std::sync::Arc<dyn crate::store::WormStore>, ExitCode> {
    let event =
        crate::retrieve::audit_event(&format!("cli:{requester}"), action, case, filter, None);
    let archive = open_archive(rt, settings.clone())?;
    let summary = import(
        &archive,
        Input::bytes(event.into_bytes()),
        rt.handle(),
        UploadPatience::default(),
        &mut |_| {},
    );
    match summary {
        Ok(s) if s.accepted == 1 => Ok(archive.store.clone()),
        Ok(_) => {
            eprintln!(
                "error: the retrieval could not be recorded in the archive; nothing was retrieved"
            );
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: recording the retrieval in the archive: {e}; nothing was retrieved");
            Err(ExitCode::from(2))
        }
    }
}

fn rti_query_cmd(settings: Settings, filter: &FilterArgs, case: &str, requester: &str) -> ExitCode {
    let filter = match filter.to_filter() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let rt = runtime();
    let store = match cli_retrieval(&rt, &settings, "rti.query", requester, case, &filter) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = rt.block_on(crate::retrieve::query(&store, &settings.layout, &filter));
    let outcome = match result {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in &outcome.records {
        let _ = writeln!(out, "{}", crate::retrieve::record_line(r));
    }
    let _ = out.flush();
    eprintln!(
        "{} records; {} bytes read; {} days from their index, {} scanned",
        outcome.records.len(),
        outcome.bytes_read,
        outcome.indexed_days,
        outcome.scanned_days
    );
    ExitCode::SUCCESS
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

/// Reports an error that kept a command from doing its job: exit code 2.
/// A report on stdout: pretty JSON with `--json`, else its text form.
fn print_report(json: bool, report: &impl serde::Serialize, text: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("serializable")
        );
    } else {
        print!("{text}");
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
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

/// Parses a UTC day argument (`--day`, `--from`, `--to`, `--start`); clap reports a bad one
/// with the option's name and exits with 2.
fn day_arg(s: &str) -> Result<Day, String> {
    Day::parse(s).ok_or_else(|| "must be a UTC day like 2026-11-20".to_owned())
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
    let input = match Input::open(&file) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", file.display());
            return ExitCode::from(2);
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
        Err(e) => return fail(e),
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
        Err(e) => fail(e),
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
        Err(e) => return fail(e),
    };
    let rt = runtime();
    let archive = match open_archive(&rt, settings) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let file = match Input::open(&input) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    crate::bench::reset_peak_rss();
    let cpu_before = crate::bench::cpu_seconds_of("self");
    let summary = match import(
        &archive,
        file,
        rt.handle(),
        UploadPatience::default(),
        &mut |_| {},
    ) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let cpu = cpu_before
        .zip(crate::bench::cpu_seconds_of("self"))
        .map(|(a, b)| b - a);
    let secs = summary.elapsed.as_secs_f64();
    let rate = summary.events as f64 / secs;
    let cores = cores();
    // CPU per event, and what the target allows on this many cores.
    let us_per_event = cpu.map(|cpu| cpu * 1e6 / summary.events.max(1) as f64);
    let budget_us = cores as f64 * 1e6 / crate::bench::ARCHIVE_TARGET;
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
    if let (Some(cpu), Some(per_event)) = (cpu, us_per_event) {
        // Steadier than throughput on a shared host, and what the target comes down to.
        println!(
            "cpu             {per_event:.1} us per event (user + system), {:.2} of {cores} cores busy; {:.0} events/s on {cores} cores needs at most {budget_us:.1}",
            cpu / secs,
            crate::bench::ARCHIVE_TARGET,
        );
    }
    match crate::bench::peak_rss_bytes() {
        Some(rss) => println!("peak RSS        {:.0} MiB", rss as f64 / (1 << 20) as f64),
        None => println!("peak RSS        (not reported by this platform)"),
    }
    // The same host, the same minute: DESIGN.md's ceiling pipeline over the first of the
    // same events, after the peak RSS is read.
    if let (Some(per_event), Some(ceiling)) =
        (us_per_event, crate::bench::ceiling_us_per_event(&input))
    {
        println!(
            "ceiling         {ceiling:.2} us per event for DESIGN.md's pipeline reproduced here (its table: {:.2}); \
             the import costs {:.1} times that, {:.0} events/s needs at most {:.1} times",
            crate::bench::DESIGN_CEILING_US,
            per_event / ceiling,
            crate::bench::ARCHIVE_TARGET,
            budget_us / ceiling
        );
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
