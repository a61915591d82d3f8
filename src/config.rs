//! Configuration: a TOML file plus `WORMVAULT_` environment overrides, validated once at
//! start-up into [`Settings`].
//!
//! Every field below is documented for the operator; the commented examples in `config/`
//! show them in use. With no file at all, wormvault runs on the embedded development store
//! under the working directory.
//!
//! **Environment overrides.** `WORMVAULT_<SECTION>__<KEY>=value` sets `[section] key`
//! (`__` separates levels, names are case-insensitive): e.g. `WORMVAULT_STORE__KIND=s3`,
//! `WORMVAULT_STORE__S3__BUCKET=archive`, `WORMVAULT_BATCH__MAX_EVENTS=50000`; top-level keys
//! are `WORMVAULT_WRITER_ID` and `WORMVAULT_STATE_DIR`. Values are read as TOML when they parse
//! as TOML (numbers, booleans, quoted strings, arrays) and as plain strings otherwise.
//! `WORMVAULT_CONFIG` names the config file; `WORMVAULT_LOG` sets the log filter.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::batch::BatchLimits;
use crate::layout::{Layout, WriterId};
use crate::retention::{Period, RetentionClass, RetentionPolicy, Rule};
use crate::store::s3::S3Settings;

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WormvaultConfig {
    /// This writer's id: 1-64 characters of a-z, 0-9 and `-`. It separates the keys and the
    /// manifest chains of daemons sharing a bucket. Default: the host name plus a random
    /// suffix, generated once and kept in the state directory.
    pub writer_id: Option<String>,
    /// Directory for the writer's local state (idempotency index, sequence counters, outbox
    /// of sealed segments awaiting upload). Default: `wormvault-state`.
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub sweep: SweepConfig,
    /// Daily roots and signed anchors; off when the section is absent.
    pub anchor: Option<AnchorConfig>,
}

/// `[anchor]`: the signed daily root (docs/FORMAT.md §11).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    /// File holding the signing key (`wormvault keygen`), readable only by the daemon. Needed
    /// to anchor (`serve`, `anchor`); sweeps and proofs need only the public keys.
    pub signing_key: Option<PathBuf>,
    /// Public keys whose anchors are accepted, as `name+keyid+base64` (what `keygen` prints).
    /// Keep retired keys here so that their anchors stay verifiable after a rotation.
    #[serde(default)]
    pub verification_keys: Vec<String>,
    /// The first line of every anchor: a name for this archive, e.g.
    /// `"archive.example-bd.com/wormvault"`. Default: the signing key's name.
    pub origin: Option<String>,
    /// How long after each UTC midnight the daemon anchors the day before. Default: 30 min.
    pub delay: Option<String>,
    /// How long after its midnight a day stops taking events; later ones for it are archived
    /// as late events in the current day. Must be shorter than `delay` minus `batch.max_age`.
    /// Default: 10 min.
    pub close_after: Option<String>,
    /// An RFC 3161 time-stamp authority (URL) that stamps every anchor; the token is stored
    /// beside it as `anchor.tsr`.
    pub tsa_url: Option<String>,
    /// The TSA's certificate (PEM file), against which tokens are checked. Required with
    /// `tsa_url`.
    pub tsa_certificate: Option<PathBuf>,
    /// A second store that receives a copy of every anchor (another bucket, region or
    /// endpoint), with the same keys as `[store]`.
    pub mirror: Option<StoreConfig>,
}

/// `[sweep]`: scheduled integrity sweeps in the daemon.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Cron schedule (UTC) of quick sweeps: the usual 5 fields (`min hour dom mon dow`), or 6
    /// with seconds first. `""` turns them off. Default: hourly, `"7 * * * *"`. Quick sweeps are
    /// incremental: the days since the last sweep, plus a random sample of older days.
    pub quick: Option<String>,
    /// Cron schedule of full sweeps (every day, every row). Default: Sundays 03:17,
    /// `"17 3 * * 0"`. `""` turns them off.
    pub full: Option<String>,
    /// Share of already-verified days a quick sweep checks again, in percent. Default: 5.
    pub sample_percent: Option<u8>,
    /// Objects checked at once. Default: 4.
    pub parallelism: Option<usize>,
    /// URL that receives a JSON POST when a sweep has findings (http or https).
    pub webhook: Option<String>,
}

/// `[server]`: the daemon's HTTP endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default: `127.0.0.1:8440`.
    pub listen: Option<String>,
    /// Largest request body; larger requests get 413. Default: 16 MiB.
    pub max_body: Option<ByteSize>,
    /// PEM certificate chain; with `tls_key`, the daemon serves HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// On SIGTERM, how long to wait for open batches to be sealed and uploaded before exiting
    /// anyway (what is not uploaded stays safely in the spool and outbox). Default: 30s.
    pub drain_timeout: Option<String>,
}

/// `[spool]`: the durable log of acknowledged events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Largest spool; beyond it new events get 429 with Retry-After (back-pressure instead of
    /// a full disk). Default: 2 GiB.
    pub max_bytes: Option<ByteSize>,
    /// Size at which a spool file is closed and a new one started. Default: 64 MiB.
    pub file_bytes: Option<ByteSize>,
}

/// `[upload]`: retrying the store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// First delay after a failed upload (then doubling, with jitter). Default: 500ms.
    pub backoff_initial: Option<String>,
    /// Longest delay between attempts. Default: 60s.
    pub backoff_max: Option<String>,
    /// `bucket check`, the daemon's start-up and `/readyz` require the bucket's default
    /// COMPLIANCE retention to be at least this many days. Default: 1.
    pub min_default_retention_days: Option<u32>,
}

/// `[auth]`: bearer tokens. Only SHA-256 hashes are configured; `wormvault token` makes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// `[[auth.tokens]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token (appears in logs and audit records), e.g. `"trade-capture"`.
    pub name: String,
    /// SHA-256 of the token, lower-case hex.
    pub sha256: String,
    /// Any of `ingest`, `compliance`, `admin`.
    pub roles: Vec<crate::auth::Role>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded development store (a directory). Not a compliance store.
    #[default]
    Local,
    /// An S3 bucket with Object Lock (AWS S3, MinIO, Ceph RGW, LocalStack).
    S3,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `local` or `s3`; when absent, `s3` if there is an `s3` section, else `local`.
    #[serde(default)]
    pub kind: Option<StoreKind>,
    /// Key prefix for everything wormvault writes, e.g. `"prod/"`. Default: none.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub local: LocalConfig,
    pub s3: Option<S3Config>,
}

/// `[store.local]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Directory of the development store. Default: `wormvault-archive`.
    pub path: Option<PathBuf>,
}

/// `[store.s3]`. Credentials come from the standard AWS chain (environment variables,
/// shared profile, web identity, container or instance metadata); never from this file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket. It must have versioning and Object Lock enabled.
    pub bucket: String,
    /// Region. Default: `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL for MinIO, Ceph RGW or LocalStack, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Default: `true` when `endpoint` is set.
    pub force_path_style: Option<bool>,
    /// Connection timeout, e.g. `"5s"`. Default: 5 s.
    pub connect_timeout: Option<String>,
    /// Timeout of one request attempt, e.g. `"60s"`. Default: 60 s.
    pub operation_timeout: Option<String>,
}

/// The largest `events.max_event_bytes` allowed.
const MAX_EVENT_BYTES_LIMIT: usize = 64 << 20;
/// `spool.file_bytes` when not configured: the size at which the spool starts a new file.
pub const DEFAULT_SPOOL_FILE_BYTES: u64 = 64 << 20;

/// `[events]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Largest accepted event (its JSON text), e.g. `"1MiB"`. Default: 1 MiB; at most
    /// 64 MiB.
    pub max_event_bytes: Option<ByteSize>,
    /// How far in the future `occurred_at` may be, for clock skew, e.g. `"5m"`. Default: 5 min.
    pub max_future_skew: Option<String>,
}

/// `[batch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Close a batch at this many events. Default: 100000.
    pub max_events: Option<usize>,
    /// Close a batch when its events hold this much memory, e.g. `"16MiB"`. Default: 16 MiB
    /// (about 19,000 events of 600 canonical bytes).
    pub max_bytes: Option<ByteSize>,
    /// Close a batch this long after its first event, e.g. `"60s"`. Default: 60 s.
    pub max_age: Option<String>,
    /// Memory budget of all open batches together; the largest is closed when it is
    /// exceeded. Default: 96 MiB.
    pub max_open_bytes: Option<ByteSize>,
}

/// `[idempotency]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// An `event_id` is recognised as already archived for at least this many days after its
    /// `occurred_at` day (and after the day it was archived). Default: 7; minimum 1.
    pub window_days: Option<u32>,
    /// Memory for the index's filter, e.g. `"16MiB"`. Default: 16 MiB, good for about
    /// 13 million events in the window at 1 % false positives; give about 1.2 bytes per event
    /// in the window. A smaller filter is still correct, only slower.
    pub filter: Option<ByteSize>,
}

/// `[retention]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Class for events no rule matches. Default: `sec-17a-4-a` (the longest shipped class).
    pub default_class: Option<String>,
    /// Extra classes, or longer periods for shipped ones:
    /// `[retention.classes.my-class] years = 7`.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassConfig>,
    /// `[[retention.rules]] actions = ["trade.*"], class = "sec-17a-4-a"`: events whose action
    /// matches a pattern (`*`, `?`) get the class; of several matching rules, the longest
    /// period wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    #[serde(default)]
    pub years: u32,
    #[serde(default)]
    pub months: u32,
    #[serde(default)]
    pub days: u32,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub actions: Vec<String>,
    pub class: String,
}

/// A byte size: an integer, or a string like `"64MiB"`, `"512 KiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"64MiB"`, `"1 GB"`, `"4096"`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"64MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `"250ms"`, `"60s"`, `"5m"`, `"1h"`, `"7d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"60s\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return Err(format!("{s:?}: give a unit (ms, s, m, h, d)")),
    };
    Ok(d)
}

/// Serde helper writing durations as text (`"60s"`).
pub mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Where the archive goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSettings {
    Local { path: PathBuf },
    S3(S3Settings),
}

/// Limits on incoming events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSettings {
    pub max_event_bytes: usize,
    pub max_future_skew: Duration,
}

/// The daemon's resolved settings.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: String,
    pub max_body: usize,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub drain_timeout: Duration,
    pub spool_max_bytes: u64,
    pub spool_file_bytes: u64,
    pub backoff: crate::pipeline::Backoff,
    pub min_default_retention_days: u32,
    pub tokens: Vec<crate::auth::Token>,
}

/// Anchoring, resolved.
#[derive(Clone, Debug)]
pub struct AnchorSettings {
    pub signing_key: Option<PathBuf>,
    pub keys: Vec<crate::note::VerifierKey>,
    pub origin: Option<String>,
    pub delay: Duration,
    pub close_after: Duration,
    /// The TSA's URL and its certificate (DER).
    pub tsa: Option<(String, Vec<u8>)>,
    pub mirror: Option<(StoreSettings, Layout)>,
}

impl AnchorSettings {
    /// Reads the signing key; its public key joins the accepted keys.
    pub fn load_signer(&self) -> Result<crate::note::SignerKey, String> {
        let path = self
            .signing_key
            .as_ref()
            .ok_or("anchor.signing_key is not set; anchoring needs it (`wormvault keygen`)")?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("anchor.signing_key {}: {e}", path.display()))?;
        crate::note::SignerKey::parse(&text)
            .map_err(|e| format!("anchor.signing_key {}: {e}", path.display()))
    }

    /// The accepted keys plus, when it can be read, the signing key's own public key.
    pub fn accepted_keys(&self) -> Vec<crate::note::VerifierKey> {
        let mut keys = self.keys.clone();
        if let Ok(s) = self.load_signer()
            && !keys.contains(&s.verifier())
        {
            keys.push(s.verifier());
        }
        keys
    }
}

/// Scheduled sweeps, resolved.
#[derive(Clone, Debug)]
pub struct SweepSettings {
    pub quick: Option<cron::Schedule>,
    pub full: Option<cron::Schedule>,
    pub sample_percent: u8,
    pub parallelism: usize,
    pub webhook: Option<String>,
}

/// Resolves a `[store]`-shaped section (`[store]`, `[anchor.mirror]`).
fn resolve_store(
    kind: Option<StoreKind>,
    local: LocalConfig,
    s3: Option<S3Config>,
    section: &str,
    err: &dyn Fn(String) -> ConfigError,
) -> Result<StoreSettings, ConfigError> {
    let dur = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        v.as_deref().map_or(Ok(default), |s| {
            parse_duration(s).map_err(|m| err(format!("{key}: {m}")))
        })
    };
    // An `s3` section without a kind means S3: a production configuration that forgot the
    // kind must not quietly archive into a local directory.
    let kind = match (kind, s3.is_some()) {
        (Some(StoreKind::Local), true) => {
            return Err(err(format!(
                "{section}.kind is \"local\" but there is a [{section}.s3] section: \
                 set kind = \"s3\", or remove the [{section}.s3] section"
            )));
        }
        (Some(kind), _) => kind,
        (None, true) => StoreKind::S3,
        (None, false) => StoreKind::Local,
    };
    Ok(match kind {
        StoreKind::Local => StoreSettings::Local {
            path: local.path.unwrap_or_else(|| "wormvault-archive".into()),
        },
        StoreKind::S3 => {
            let s3 = s3.ok_or_else(|| {
                err(format!(
                    "{section}.kind is \"s3\" but there is no [{section}.s3] section with a bucket"
                ))
            })?;
            if s3.bucket.is_empty() {
                return Err(err(format!("{section}.s3.bucket is empty")));
            }
            StoreSettings::S3(S3Settings {
                force_path_style: s3.force_path_style.unwrap_or(s3.endpoint.is_some()),
                bucket: s3.bucket,
                region: s3.region.unwrap_or_else(|| "us-east-1".into()),
                endpoint: s3.endpoint,
                connect_timeout: dur(
                    &format!("{section}.s3.connect_timeout"),
                    &s3.connect_timeout,
                    Duration::from_secs(5),
                )?,
                operation_timeout: dur(
                    &format!("{section}.s3.operation_timeout"),
                    &s3.operation_timeout,
                    Duration::from_secs(60),
                )?,
            })
        }
    })
}

/// Parses a cron expression. Five fields are crontab (`min hour dom mon dow`, days of the week
/// 0-7 with 0 and 7 Sunday): a seconds field `0` is added and numeric days of the week become
/// names, because the `cron` crate counts them 1-7 from Sunday. Six or seven fields are taken
/// in the `cron` crate's own syntax (seconds first).
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    use std::str::FromStr;
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let full = match fields.len() {
        5 => {
            const NAMES: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            let mut dow = String::new();
            let mut number = String::new();
            let flush = |number: &mut String, dow: &mut String| -> Result<(), String> {
                if !number.is_empty() {
                    let n: usize = number
                        .parse()
                        .map_err(|_| format!("{expr:?}: bad day of week"))?;
                    dow.push_str(
                        NAMES
                            .get(n)
                            .ok_or_else(|| format!("{expr:?}: day of week {n} is not 0-7"))?,
                    );
                    number.clear();
                }
                Ok(())
            };
            // Step values (after `/`) stay numbers.
            let (range, step) = fields[4]
                .split_once('/')
                .map_or((fields[4], None), |(r, s)| (r, Some(s)));
            for ch in range.chars() {
                if ch.is_ascii_digit() {
                    number.push(ch);
                } else {
                    flush(&mut number, &mut dow)?;
                    dow.push(ch);
                }
            }
            flush(&mut number, &mut dow)?;
            if let Some(step) = step {
                dow.push('/');
                dow.push_str(step);
            }
            format!(
                "0 {} {} {} {} {dow}",
                fields[0], fields[1], fields[2], fields[3]
            )
        }
        6 | 7 => expr.to_owned(),
        _ => {
            return Err(format!(
                "{expr:?} is not a cron schedule (5 fields: minute hour day-of-month month day-of-week)"
            ));
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("{expr:?} is not a cron schedule: {e}"))
}

/// The resolved, validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the settings came from (a file path or "built-in defaults").
    pub origin: String,
    pub writer_id: Option<WriterId>,
    pub state_dir: PathBuf,
    pub store: StoreSettings,
    pub layout: Layout,
    pub events: EventSettings,
    pub batch: BatchLimits,
    pub window_days: u32,
    pub index_filter_bytes: usize,
    pub retention: Arc<RetentionPolicy>,
    pub server: ServerSettings,
    pub sweep: SweepSettings,
    pub anchor: Option<AnchorSettings>,
}

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

impl Settings {
    /// Loads `path` (or the file named by `WORMVAULT_CONFIG`, or nothing), applies the
    /// environment overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let path = path.map(Path::to_owned).or_else(|| {
            env.iter()
                .find(|(k, _)| k == "WORMVAULT_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        let (origin, text) = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    origin: p.display().to_string(),
                    message: format!("cannot read the config file: {e}"),
                })?;
                (p.display().to_string(), text)
            }
            None => ("built-in defaults".to_owned(), String::new()),
        };
        Self::from_toml(&origin, &text, env)
    }

    /// Parses TOML text with environment overrides.
    pub fn from_toml(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let err = |message: String| ConfigError {
            origin: origin.to_owned(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| err(format!("{e}")))?;
        let mut overridden = Vec::new();
        for (k, v) in env {
            let Some(name) = k.strip_prefix("WORMVAULT_") else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            let path: Vec<&str> = if name.contains("__") {
                name.split("__").collect()
            } else if name == "writer_id" || name == "state_dir" {
                vec![name.as_str()]
            } else {
                continue;
            };
            set_path(&mut table, &path, parse_env_value(&v))
                .map_err(|m| err(format!("{k}: {m}")))?;
            overridden.push(k);
        }
        let origin = if overridden.is_empty() {
            origin.to_owned()
        } else {
            format!("{origin} (overridden by {})", overridden.join(", "))
        };
        let config: WormvaultConfig = WormvaultConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        Self::resolve(origin, config)
    }

    fn resolve(origin: String, c: WormvaultConfig) -> Result<Settings, ConfigError> {
        let err = |message: String| ConfigError {
            origin: origin.clone(),
            message,
        };
        let dur =
            |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                v.as_deref().map_or(Ok(default), |s| {
                    parse_duration(s).map_err(|m| err(format!("{key}: {m}")))
                })
            };
        let writer_id = c
            .writer_id
            .as_deref()
            .map(WriterId::parse)
            .transpose()
            .map_err(|m| err(format!("writer_id: {m}")))?;
        let store = resolve_store(c.store.kind, c.store.local, c.store.s3, "store", &err)?;
        let max_event_bytes = c.events.max_event_bytes.map_or(1 << 20, |b| b.0) as usize;
        if max_event_bytes < 1024 {
            return Err(err(format!(
                "events.max_event_bytes is {max_event_bytes}; at least 1 KiB is needed"
            )));
        }
        if max_event_bytes > MAX_EVENT_BYTES_LIMIT {
            return Err(err(format!(
                "events.max_event_bytes is {max_event_bytes}; at most 64 MiB is allowed (a \
                 record keeps its fields' places as 32-bit offsets, and an event that large \
                 belongs in a document store, referenced from the event)"
            )));
        }
        let events = EventSettings {
            max_event_bytes,
            max_future_skew: dur(
                "events.max_future_skew",
                &c.events.max_future_skew,
                Duration::from_secs(300),
            )?,
        };
        let batch = BatchLimits {
            max_events: c.batch.max_events.unwrap_or(100_000),
            max_bytes: c.batch.max_bytes.map_or(16 << 20, |b| b.0) as usize,
            max_age: dur("batch.max_age", &c.batch.max_age, Duration::from_secs(60))?,
            max_open_bytes: c.batch.max_open_bytes.map_or(96 << 20, |b| b.0) as usize,
        };
        if batch.max_events == 0 {
            return Err(err("batch.max_events must be at least 1".into()));
        }
        if batch.max_open_bytes < batch.max_bytes {
            return Err(err(
                "batch.max_open_bytes must be at least batch.max_bytes".into()
            ));
        }
        let window_days = c.idempotency.window_days.unwrap_or(7);
        if window_days == 0 {
            return Err(err("idempotency.window_days must be at least 1".into()));
        }
        let classes = c
            .retention
            .classes
            .into_iter()
            .map(|(name, cc)| RetentionClass {
                name: crate::retention::ClassName::new(&name),
                period: Period {
                    years: cc.years,
                    months: cc.months,
                    days: cc.days,
                },
                description: cc.description,
            })
            .collect();
        let rules = c
            .retention
            .rules
            .into_iter()
            .flat_map(|r| {
                let class = r.class;
                r.actions.into_iter().map(move |pattern| Rule {
                    pattern,
                    class: class.as_str().into(),
                })
            })
            .collect();
        let retention = RetentionPolicy::new(classes, rules, c.retention.default_class)
            .map_err(|m| err(format!("retention: {m}")))?;
        let tls = match (c.server.tls_cert, c.server.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(err("server.tls_cert and server.tls_key go together".into())),
        };
        let mut tokens = Vec::new();
        for t in c.auth.tokens {
            tokens.push(
                crate::auth::Token::new(&t.name, &t.sha256, &t.roles)
                    .map_err(|m| err(format!("auth.tokens: {m}")))?,
            );
        }
        let server = ServerSettings {
            listen: c.server.listen.unwrap_or_else(|| "127.0.0.1:8440".into()),
            max_body: c.server.max_body.map_or(16 << 20, |b| b.0) as usize,
            tls,
            drain_timeout: dur(
                "server.drain_timeout",
                &c.server.drain_timeout,
                Duration::from_secs(30),
            )?,
            spool_max_bytes: c.spool.max_bytes.map_or(2 << 30, |b| b.0),
            spool_file_bytes: c
                .spool
                .file_bytes
                .map_or(DEFAULT_SPOOL_FILE_BYTES, |b| b.0)
                .max(4096),
            backoff: crate::pipeline::Backoff {
                initial: dur(
                    "upload.backoff_initial",
                    &c.upload.backoff_initial,
                    Duration::from_millis(500),
                )?,
                max: dur(
                    "upload.backoff_max",
                    &c.upload.backoff_max,
                    Duration::from_secs(60),
                )?,
            },
            min_default_retention_days: c.upload.min_default_retention_days.unwrap_or(1),
            tokens,
        };
        let schedule = |key: &str,
                        v: Option<String>,
                        default: &str|
         -> Result<Option<cron::Schedule>, ConfigError> {
            let expr = v.unwrap_or_else(|| default.to_owned());
            if expr.trim().is_empty() {
                return Ok(None);
            }
            parse_cron(&expr)
                .map(Some)
                .map_err(|m| err(format!("{key}: {m}")))
        };
        let sweep = SweepSettings {
            quick: schedule("sweep.quick", c.sweep.quick, "7 * * * *")?,
            full: schedule("sweep.full", c.sweep.full, "17 3 * * 0")?,
            sample_percent: c.sweep.sample_percent.unwrap_or(5).min(100),
            parallelism: c.sweep.parallelism.unwrap_or(4).clamp(1, 64),
            webhook: c.sweep.webhook.filter(|w| !w.is_empty()),
        };
        if let Some(w) = &sweep.webhook
            && !(w.starts_with("http://") || w.starts_with("https://"))
        {
            return Err(err(format!(
                "sweep.webhook {w:?} must be an http:// or https:// URL"
            )));
        }
        let anchor = match c.anchor {
            None => None,
            Some(a) => {
                let mut keys = Vec::new();
                for k in &a.verification_keys {
                    keys.push(
                        crate::note::VerifierKey::parse(k)
                            .map_err(|m| err(format!("anchor.verification_keys: {k:?}: {m}")))?,
                    );
                }
                let delay = dur("anchor.delay", &a.delay, Duration::from_secs(1800))?;
                let close_after = dur(
                    "anchor.close_after",
                    &a.close_after,
                    Duration::from_secs(600),
                )?;
                if close_after + batch.max_age >= delay {
                    return Err(err(format!(
                        "anchor.close_after ({}) plus batch.max_age ({}) must be shorter than anchor.delay ({}), or a batch could reach a day after its anchor",
                        format_duration(close_after),
                        format_duration(batch.max_age),
                        format_duration(delay)
                    )));
                }
                if let Some(o) = &a.origin
                    && (o.is_empty() || o.contains('\n'))
                {
                    return Err(err("anchor.origin must be one non-empty line".into()));
                }
                let mirror = match a.mirror {
                    None => None,
                    Some(m) => Some((
                        resolve_store(m.kind, m.local, m.s3, "anchor.mirror", &err)?,
                        Layout::new(&m.prefix),
                    )),
                };
                if a.signing_key.is_none() && keys.is_empty() {
                    return Err(err(
                        "[anchor] needs a signing_key (to anchor) or verification_keys (to check)"
                            .into(),
                    ));
                }
                let tsa = match (a.tsa_url, a.tsa_certificate) {
                    (None, None) => None,
                    (Some(url), Some(cert)) => {
                        if !(url.starts_with("http://") || url.starts_with("https://")) {
                            return Err(err(format!(
                                "anchor.tsa_url {url:?} must be an http:// or https:// URL"
                            )));
                        }
                        let der = std::fs::read_to_string(&cert)
                            .map_err(|e| e.to_string())
                            .and_then(|pem| crate::tsa::pem_certificate(&pem))
                            .map_err(|m| {
                                err(format!("anchor.tsa_certificate {}: {m}", cert.display()))
                            })?;
                        Some((url, der))
                    }
                    _ => {
                        return Err(err(
                            "anchor.tsa_url and anchor.tsa_certificate go together".into()
                        ));
                    }
                };
                Some(AnchorSettings {
                    signing_key: a.signing_key,
                    keys,
                    origin: a.origin,
                    delay,
                    close_after,
                    tsa,
                    mirror,
                })
            }
        };
        if server.max_body < max_event_bytes {
            return Err(err(
                "server.max_body must be at least events.max_event_bytes".into(),
            ));
        }
        Ok(Settings {
            writer_id,
            state_dir: c.state_dir.unwrap_or_else(|| "wormvault-state".into()),
            store,
            layout: Layout::new(&c.store.prefix),
            events,
            batch,
            window_days,
            index_filter_bytes: c.idempotency.filter.map_or(16 << 20, |b| b.0) as usize,
            retention: Arc::new(retention),
            server,
            sweep,
            anchor,
            origin,
        })
    }

    /// The resolved settings, for `wormvault config check`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "settings from {}", self.origin);
        let _ = writeln!(
            s,
            "writer_id        {}",
            self.writer_id.as_ref().map_or(
                "(default: host name + persisted random suffix)".into(),
                |w| w.to_string()
            )
        );
        let _ = writeln!(s, "state_dir        {}", self.state_dir.display());
        match &self.store {
            StoreSettings::Local { path } => {
                let _ = writeln!(
                    s,
                    "store            local development store at {} (NOT a compliance store)",
                    path.display()
                );
            }
            StoreSettings::S3(s3) => {
                let _ = writeln!(
                    s,
                    "store            s3://{} region {} endpoint {} path-style {} (timeouts: connect {}, attempt {})",
                    s3.bucket,
                    s3.region,
                    s3.endpoint.as_deref().unwrap_or("AWS"),
                    s3.force_path_style,
                    format_duration(s3.connect_timeout),
                    format_duration(s3.operation_timeout)
                );
            }
        }
        let _ = writeln!(s, "key prefix       {:?}", self.layout.prefix());
        let _ = writeln!(
            s,
            "events           max {} bytes, occurred_at at most {} ahead",
            self.events.max_event_bytes,
            format_duration(self.events.max_future_skew)
        );
        let _ = writeln!(
            s,
            "batch            max {} events, {} bytes, {} old; open batches share {} bytes",
            self.batch.max_events,
            self.batch.max_bytes,
            format_duration(self.batch.max_age),
            self.batch.max_open_bytes
        );
        let _ = writeln!(
            s,
            "idempotency      window {} days, index filter {} bytes",
            self.window_days, self.index_filter_bytes
        );
        let _ = writeln!(
            s,
            "retention        default class {}",
            self.retention.default_class()
        );
        for c in self.retention.classes() {
            let _ = writeln!(
                s,
                "  class {:<16} {:<10} {}",
                c.name,
                c.period.to_string(),
                c.description
            );
        }
        for r in self.retention.rules() {
            let _ = writeln!(s, "  rule  {:<16} -> {}", r.pattern, r.class);
        }
        let v = &self.server;
        let _ = writeln!(
            s,
            "server           {}{} | body up to {} bytes | drain {}",
            if v.tls.is_some() {
                "https://"
            } else {
                "http://"
            },
            v.listen,
            v.max_body,
            format_duration(v.drain_timeout)
        );
        let _ = writeln!(
            s,
            "spool            up to {} bytes, files of {} bytes",
            v.spool_max_bytes, v.spool_file_bytes
        );
        let _ = writeln!(
            s,
            "upload           backoff {} .. {}; ready needs default retention >= {} days",
            format_duration(v.backoff.initial),
            format_duration(v.backoff.max),
            v.min_default_retention_days
        );
        let sw = &self.sweep;
        let _ = writeln!(
            s,
            "sweep            quick {} | full {} | resample {}% of older days | {} at once{}",
            sw.quick.as_ref().map_or("off".into(), |c| c.to_string()),
            sw.full.as_ref().map_or("off".into(), |c| c.to_string()),
            sw.sample_percent,
            sw.parallelism,
            sw.webhook
                .as_ref()
                .map_or(String::new(), |w| format!(" | findings to {w}"))
        );
        match &self.anchor {
            None => {
                let _ = writeln!(s, "anchor           off (no [anchor] section)");
            }
            Some(a) => {
                let _ = writeln!(
                    s,
                    "anchor           {} | {} accepted keys | after midnight +{} | days close at +{}{}{}",
                    a.signing_key.as_ref().map_or(
                        "no signing key: checks only".into(),
                        |p| format!("signs with {}", p.display())
                    ),
                    a.keys.len(),
                    format_duration(a.delay),
                    format_duration(a.close_after),
                    a.tsa
                        .as_ref()
                        .map_or(String::new(), |(u, _)| format!(" | time-stamped by {u}")),
                    a.mirror
                        .as_ref()
                        .map_or(String::new(), |_| " | mirrored".into()),
                );
            }
        }
        if v.tokens.is_empty() {
            let _ = writeln!(
                s,
                "auth             no tokens: `serve` on the development store makes a local one"
            );
        }
        for t in &v.tokens {
            let _ = writeln!(
                s,
                "auth             token {:?} roles {}",
                t.name,
                t.roles_text()
            );
        }
        s
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        if p.is_empty() {
            return Err("empty key segment".into());
        }
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_toml(
            "test.toml",
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn no_config_means_the_local_development_store() {
        let s = load("", &[]).unwrap();
        assert_eq!(
            s.store,
            StoreSettings::Local {
                path: "wormvault-archive".into()
            }
        );
        assert_eq!(s.events.max_event_bytes, 1 << 20);
        assert_eq!(s.window_days, 7);
        assert_eq!(&**s.retention.default_class(), "sec-17a-4-a");
        assert!(s.describe().contains("NOT a compliance store"));
    }

    #[test]
    fn an_s3_section_without_a_kind_is_s3() {
        let s = load("[store.s3]\nbucket = \"arch\"\n", &[]).unwrap();
        assert!(matches!(&s.store, StoreSettings::S3(s3) if s3.bucket == "arch"));
        let s = load("[store]\nprefix = \"p/\"\n", &[]).unwrap();
        assert!(matches!(&s.store, StoreSettings::Local { .. }));
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = load(
            "[store]\nkind = \"local\"\n[batch]\nmax_events = 10\n",
            &[
                ("WORMVAULT_STORE__KIND", "s3"),
                ("WORMVAULT_STORE__S3__BUCKET", "arch"),
                ("WORMVAULT_STORE__S3__ENDPOINT", "http://127.0.0.1:4566"),
                ("WORMVAULT_BATCH__MAX_EVENTS", "50"),
                ("WORMVAULT_WRITER_ID", "w-1"),
                ("WORMVAULT_LOG", "debug"),
                ("WORMVAULT_TEST_S3_ENDPOINT", "ignored"),
            ],
        )
        .unwrap();
        let StoreSettings::S3(s3) = &s.store else {
            panic!()
        };
        assert_eq!(s3.bucket, "arch");
        assert!(s3.force_path_style, "defaults on with a custom endpoint");
        assert_eq!(s.batch.max_events, 50);
        assert_eq!(s.writer_id.unwrap().as_str(), "w-1");
        assert!(s.origin.contains("WORMVAULT_BATCH__MAX_EVENTS"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = |t: &str| load(t, &[]).unwrap_err().to_string();
        assert!(e("[batch]\nmax_evnts = 1\n").contains("max_evnts"));
        assert!(e("[store]\nkind = \"s3\"\n").contains("[store.s3]"));
        assert!(
            e("[store]\nkind = \"local\"\n[store.s3]\nbucket = \"b\"\n")
                .contains("store.kind is \"local\" but there is a [store.s3] section")
        );
        assert!(e("[batch]\nmax_age = \"60\"\n").contains("batch.max_age"));
        assert!(e("[events]\nmax_event_bytes = \"1 XB\"\n").contains("unknown size unit"));
        assert!(e("[events]\nmax_event_bytes = \"65MiB\"\n").contains("at most 64 MiB"));
        let most = "[events]\nmax_event_bytes = \"64MiB\"\n[server]\nmax_body = \"64MiB\"\n";
        assert_eq!(load(most, &[]).unwrap().events.max_event_bytes, 64 << 20);
        assert!(e("writer_id = \"Bad_Id\"\n").contains("writer_id"));
        assert!(e("[retention]\ndefault_class = \"nope\"\n").contains("nope"));
        assert!(e("[retention.classes.sec-17a-4-b]\nyears = 2\n").contains("never shortened"));
        assert!(
            e("[[retention.rules]]\nactions = [\"x.*\"]\nclass = \"missing\"\n")
                .contains("missing")
        );
        assert!(e("[sweep]\nquick = \"every hour\"\n").contains("sweep.quick"));
        assert!(e("[sweep]\nwebhook = \"ftp://x\"\n").contains("sweep.webhook"));
    }

    #[test]
    fn cron_accepts_five_fields_and_six() {
        let s = load("[sweep]\nquick = \"*/15 * * * *\"\nfull = \"\"\n", &[]).unwrap();
        assert!(s.sweep.full.is_none());
        let next: Vec<_> = s
            .sweep
            .quick
            .unwrap()
            .after(&chrono::DateTime::from_timestamp(0, 0).unwrap())
            .take(2)
            .collect();
        assert_eq!(next[0].to_rfc3339(), "1970-01-01T00:15:00+00:00");
        assert_eq!(next[1].to_rfc3339(), "1970-01-01T00:30:00+00:00");
        assert!(parse_cron("30 0 3 * * Sun").is_ok());
        // Crontab days of the week: 0 and 7 are Sunday, 1 is Monday.
        let after = |e: &str| {
            parse_cron(e)
                .unwrap()
                .after(&chrono::DateTime::from_timestamp(0, 0).unwrap())
                .next()
                .unwrap()
                .to_rfc3339()
        };
        assert_eq!(
            after("0 3 * * 0"),
            "1970-01-04T03:00:00+00:00",
            "1970-01-04 was a Sunday"
        );
        assert_eq!(after("0 3 * * 7"), "1970-01-04T03:00:00+00:00");
        assert_eq!(after("0 3 * * 1"), "1970-01-05T03:00:00+00:00");
        assert_eq!(
            after("0 3 * * 1-5"),
            "1970-01-01T03:00:00+00:00",
            "Thursday"
        );
        assert!(parse_cron("0 3 * * 8").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1 GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").is_err());
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
