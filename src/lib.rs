//! wormvault turns a stream of business events into a tamper-evident, write-once archive on
//! S3 Object Lock, for broker-dealers under SEC Rule 17a-4(f), FINRA Rule 4511 and CFTC 1.31.
//!
//! # Layout
//!
//! The pipeline, in the order an event travels (docs/ARCHITECTURE.md has the whole picture):
//!
//! - [`event`]: the wire contract — typed parsing, validation, canonical bytes.
//! - [`canonical`]: RFC 8785 JSON canonicalization, the byte form everything is hashed in.
//! - [`retention`]: retention classes, action rules and the retain-until rule.
//! - [`batch`]: admission (idempotency, lane sequence numbers) and batching.
//! - [`seal`]: a closed batch becomes a segment in the local outbox, committed with the state.
//! - [`segment`]: the Parquet format of a batch; [`merkle`]: RFC 6962 trees and proofs.
//! - [`manifest`]: the sealed record of one batch, chained per writer.
//! - [`upload`]: outbox → store, segment then manifest, idempotently.
//! - [`pipeline`]: seal workers, the in-order committer and the uploader loop, shared by the
//!   importer and the daemon.
//! - [`store`]: the narrow write-once storage trait, with S3 and local backends.
//! - [`layout`]: every object key, built in one place.
//! - [`index`]: the idempotency index (sorted runs on disk, a filter in memory).
//! - [`state`]: the writer's local state (lane counters, outbox, chain head).
//! - [`import`]: `wormvault archive FILE`, the file path through the pipeline.
//! - [`archive`]: an archive opened for writing (settings + store + state + writer id).
//! - [`config`], [`telemetry`], [`cli`], [`bench`]: the edges.
//! - [`timestamp`]: UTC instants and days.

pub mod anchor;
pub mod archive;
pub mod auth;
pub mod batch;
pub mod bench;
pub mod bucket;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event;
pub mod import;
pub mod index;
pub mod ingest;
pub mod layout;
pub mod loadgen;
pub mod manifest;
pub mod merkle;
pub mod note;
pub mod notify;
pub mod pipeline;
pub mod proof;
pub mod retention;
pub mod retrieve;
pub mod rti;
pub mod seal;
pub mod segment;
pub mod server;
pub mod spool;
pub mod state;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod timestamp;
pub mod tsa;
pub mod upload;
