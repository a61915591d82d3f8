//! Logs: `tracing` with JSON lines when stderr is not a terminal (or when asked), human text
//! otherwise. `WORMVAULT_LOG` sets the filter (default `info`), e.g. `wormvault=debug`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Installs the global subscriber. Logs go to stderr; stdout is for command output.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("WORMVAULT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // A second initialisation (tests) keeps the first subscriber.
    let _ = result;
}

/// Metrics, all named here: `*_total` counters, `*_seconds` histograms, low-cardinality labels
/// only (never a key or an event id).
pub mod metrics {
    use std::sync::OnceLock;
    use std::time::Duration;

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    use crate::daemon::EventOutcome;
    use crate::timestamp::Timestamp;

    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

    /// Installs the Prometheus recorder (once per process) and returns its handle.
    pub fn install() -> PrometheusHandle {
        HANDLE
            .get_or_init(|| {
                let buckets = [
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ];
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                    .expect("valid buckets")
                    .build_recorder();
                let handle = recorder.handle();
                let _ = ::metrics::set_global_recorder(recorder);
                describe();
                handle
            })
            .clone()
    }

    fn describe() {
        use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "wormvault_events_accepted_total",
            "Events acknowledged (durable in the spool)."
        );
        describe_counter!(
            "wormvault_events_duplicate_total",
            "Events already archived with identical content."
        );
        describe_counter!(
            "wormvault_events_rejected_total",
            "Events refused, by reason."
        );
        describe_gauge!("wormvault_spool_bytes", Unit::Bytes, "Bytes in the spool.");
        describe_gauge!(
            "wormvault_spool_oldest_event_age_seconds",
            Unit::Seconds,
            "Age (since ingestion) of the oldest acknowledged event not yet confirmed in the store; 0 when the store has them all."
        );
        describe_counter!(
            "wormvault_segments_sealed_total",
            "Batches sealed into segments."
        );
        describe_counter!(
            "wormvault_batches_uploaded_total",
            "Segments and manifests confirmed in the store."
        );
        describe_histogram!(
            "wormvault_upload_seconds",
            Unit::Seconds,
            "Time to store and verify one segment and its manifest."
        );
        describe_counter!("wormvault_upload_errors_total", "Failed upload attempts.");
        describe_histogram!(
            "wormvault_spool_fsync_seconds",
            Unit::Seconds,
            "Time of one spool append and fsync (a group commit)."
        );
        describe_histogram!(
            "wormvault_seal_handover_seconds",
            Unit::Seconds,
            "Time the sequencer waited to hand one closed batch to the seal workers; no request is acknowledged meanwhile."
        );
        describe_gauge!(
            "wormvault_ready",
            "1 when the store is reachable and the bucket is fit for the archive."
        );
        describe_counter!(
            "wormvault_backpressure_total",
            "Requests refused because the spool was full."
        );
        describe_counter!(
            "wormvault_auth_refused_total",
            "Requests refused by authentication or authorization."
        );
        describe_histogram!(
            "wormvault_ingest_request_seconds",
            Unit::Seconds,
            "Time from request to acknowledgement."
        );
        describe_gauge!(
            "wormvault_sweep_last_success_timestamp_seconds",
            Unit::Seconds,
            "When the last sweep of each level finished."
        );
        describe_counter!(
            "wormvault_sweep_bytes_verified_total",
            Unit::Bytes,
            "Bytes read and hashed or decoded by sweeps."
        );
        describe_histogram!(
            "wormvault_sweep_seconds",
            Unit::Seconds,
            "Duration of sweeps."
        );
        describe_gauge!(
            "wormvault_sweep_findings",
            "Findings of the last sweep, by class."
        );
        describe_counter!(
            "wormvault_sweep_failures_total",
            "Scheduled sweeps that could not run."
        );
        describe_gauge!(
            "wormvault_build_info",
            "1, labelled with the running version."
        );
        describe_gauge!(
            "wormvault_spool_limit_bytes",
            Unit::Bytes,
            "spool.max_bytes: beyond it, new events get 429."
        );
        describe_gauge!(
            "wormvault_anchor_last_day_timestamp_seconds",
            Unit::Seconds,
            "Start (00:00 UTC) of the latest day with a signed anchor in the store."
        );
        describe_gauge!(
            "wormvault_anchor_delay_seconds",
            Unit::Seconds,
            "anchor.delay: how long after midnight (UTC) yesterday is anchored."
        );
        describe_counter!(
            "wormvault_anchor_failures_total",
            "Anchoring rounds that failed (retried a minute later)."
        );
        describe_gauge!(
            "wormvault_uploads_halted",
            "1 once uploads stopped on an error retrying cannot mend (until a restart)."
        );
    }

    /// The daemon's constant series, and every counter an alert in `config/alerts.yml` reads
    /// at zero: a counter never incremented is absent from `/metrics`, and `increase()` over
    /// an absent series never fires. `anchor_delay` is `None` without an `[anchor]` section.
    pub fn started(spool_limit_bytes: u64, anchor_delay: Option<Duration>) {
        ::metrics::gauge!("wormvault_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        ::metrics::gauge!("wormvault_spool_limit_bytes").set(spool_limit_bytes as f64);
        ::metrics::gauge!("wormvault_uploads_halted").set(0.0);
        if let Some(delay) = anchor_delay {
            ::metrics::gauge!("wormvault_anchor_delay_seconds").set(delay.as_secs_f64());
            ::metrics::counter!("wormvault_anchor_failures_total").increment(0);
        }
        for name in [
            "wormvault_events_accepted_total",
            "wormvault_events_duplicate_total",
            "wormvault_segments_sealed_total",
            "wormvault_batches_uploaded_total",
            "wormvault_upload_errors_total",
            "wormvault_backpressure_total",
        ] {
            ::metrics::counter!(name).increment(0);
        }
        for level in ["quick", "full"] {
            ::metrics::counter!("wormvault_sweep_failures_total", "level" => level).increment(0);
        }
    }

    /// The latest day anchored in the store, as the time its day began.
    pub fn anchored_through(day: crate::timestamp::Day) {
        ::metrics::gauge!("wormvault_anchor_last_day_timestamp_seconds")
            .set(day.start().as_micros() as f64 / 1e6);
    }

    pub fn uploads_halted() {
        ::metrics::gauge!("wormvault_uploads_halted").set(1.0);
    }

    pub fn anchor_failed() {
        ::metrics::counter!("wormvault_anchor_failures_total").increment(1);
    }

    pub fn outcomes(outcomes: &[EventOutcome]) {
        let (mut accepted, mut duplicate) = (0u64, 0u64);
        for o in outcomes {
            match o {
                EventOutcome::Accepted { .. } => accepted += 1,
                EventOutcome::Duplicate => duplicate += 1,
                EventOutcome::Conflict => ::metrics::counter!("wormvault_events_rejected_total", "reason" => "conflict").increment(1),
                EventOutcome::Rejected(e) => {
                    ::metrics::counter!("wormvault_events_rejected_total", "reason" => e.kind.as_str()).increment(1)
                }
            }
        }
        ::metrics::counter!("wormvault_events_accepted_total").increment(accepted);
        ::metrics::counter!("wormvault_events_duplicate_total").increment(duplicate);
    }

    pub fn spool(bytes: u64, oldest: Option<Timestamp>) {
        ::metrics::gauge!("wormvault_spool_bytes").set(bytes as f64);
        let age = oldest.map_or(0.0, |t| {
            (Timestamp::now().as_micros() - t.as_micros()).max(0) as f64 / 1e6
        });
        ::metrics::gauge!("wormvault_spool_oldest_event_age_seconds").set(age);
    }

    pub fn batch_sealed() {
        ::metrics::counter!("wormvault_segments_sealed_total").increment(1);
    }

    pub fn uploaded(elapsed: Duration) {
        ::metrics::counter!("wormvault_batches_uploaded_total").increment(1);
        ::metrics::histogram!("wormvault_upload_seconds").record(elapsed.as_secs_f64());
    }

    pub fn upload_error() {
        ::metrics::counter!("wormvault_upload_errors_total").increment(1);
    }

    pub fn fsync(elapsed: Duration) {
        ::metrics::histogram!("wormvault_spool_fsync_seconds").record(elapsed.as_secs_f64());
    }

    pub fn seal_handover(elapsed: Duration) {
        ::metrics::histogram!("wormvault_seal_handover_seconds").record(elapsed.as_secs_f64());
    }

    pub fn ready(ready: bool) {
        ::metrics::gauge!("wormvault_ready").set(if ready { 1.0 } else { 0.0 });
    }

    pub fn backpressure() {
        ::metrics::counter!("wormvault_backpressure_total").increment(1);
    }

    pub fn auth_refused(reason: &'static str) {
        ::metrics::counter!("wormvault_auth_refused_total", "reason" => reason).increment(1);
    }

    pub fn sweep_completed(
        level: &'static str,
        report: &crate::sweep::SweepReport,
        elapsed: Duration,
    ) {
        ::metrics::gauge!("wormvault_sweep_last_success_timestamp_seconds", "level" => level)
            .set(report.finished_at.as_micros() as f64 / 1e6);
        ::metrics::counter!("wormvault_sweep_bytes_verified_total", "level" => level)
            .increment(report.counts.bytes_verified);
        ::metrics::histogram!("wormvault_sweep_seconds", "level" => level)
            .record(elapsed.as_secs_f64());
        let by_class = report.by_class();
        for class in crate::sweep::FindingClass::ALL {
            let n = by_class.get(&class).copied().unwrap_or(0);
            ::metrics::gauge!("wormvault_sweep_findings", "class" => class.code()).set(n as f64);
        }
    }

    pub fn sweep_failed(level: &'static str) {
        ::metrics::counter!("wormvault_sweep_failures_total", "level" => level).increment(1);
    }

    pub fn request(elapsed: Duration) {
        ::metrics::histogram!("wormvault_ingest_request_seconds").record(elapsed.as_secs_f64());
    }
}
