//! Sealing: a closed batch becomes a segment in the local outbox, committed with the state.
//!
//! [`seal`] is pure CPU and file work (Merkle root, Parquet encoding, the outbox file and its
//! fsync) and may run on any thread; [`commit`] must be called in `batch_idx` order. Only after
//! the commit is the batch *sealed*: its events are in the idempotency index, its lane's
//! numbering has advanced, and the upload can happen at any later time, as often as needed.
//! The batch's idempotency run is written with its segment and published after the commit
//! (see [`crate::index`] for why that order is crash-safe).

use std::sync::Arc;

use crate::batch::ClosedBatch;
use crate::index::{Entry, Index, PendingRun, Seen};
use crate::layout::WriterId;
use crate::retention::RetentionPolicy;
use crate::segment::{SegmentHeader, write_segment};
use crate::state::{Lane, OutboxEntry, SealCommit, State, StateError};
use crate::timestamp::{Day, Timestamp};

/// A batch encoded and in the outbox, not yet committed.
pub struct SealedBatch {
    pub entry: OutboxEntry,
    pub lane: Lane,
    pub lane_next_seq: u64,
    run: PendingRun,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("encoding the segment of batch {batch_idx}: {source}")]
    Encode {
        batch_idx: u64,
        source: parquet::errors::ParquetError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("writing the idempotency index run of batch {batch_idx}: {source}")]
    Index {
        batch_idx: u64,
        source: std::io::Error,
    },
}

/// What sealing needs to know besides the batch.
#[derive(Clone)]
pub struct SealContext {
    pub writer: WriterId,
    pub retention: Arc<RetentionPolicy>,
    /// Idempotency window in days.
    pub window_days: u32,
    pub state: Arc<State>,
    pub index: Arc<Index>,
}

/// Encodes a closed batch and writes it to the outbox (fsynced).
pub fn seal(
    batch: ClosedBatch,
    ctx: &SealContext,
    now: Timestamp,
) -> Result<SealedBatch, SealError> {
    let retain_until = ctx
        .retention
        .segment_retain_until(batch.lane.day, &batch.lane.class, now);
    let header = SegmentHeader {
        writer: ctx.writer.clone(),
        batch_idx: batch.batch_idx,
        day: batch.lane.day,
        retention_class: batch.lane.class.to_string(),
        retain_until,
        first_seq: batch.first_seq,
    };
    let sealed = write_segment(&header, &batch.records).map_err(|source| SealError::Encode {
        batch_idx: batch.batch_idx,
        source,
    })?;
    ctx.state
        .write_outbox_file(batch.batch_idx, &sealed.bytes)?;
    let today = now.day();
    let entries = batch
        .records
        .iter()
        .map(|r| {
            let from = r.occurred_at.day().max(today);
            let expires =
                Day::from_days_since_epoch(from.days_since_epoch() + ctx.window_days as i32);
            Entry {
                fingerprint: r.fingerprint,
                seen: Seen::new(&r.digest, expires),
            }
        })
        .collect();
    let run = ctx
        .index
        .write_run(batch.lane.day, batch.batch_idx, entries)
        .map_err(|source| SealError::Index {
            batch_idx: batch.batch_idx,
            source,
        })?;
    let n = batch.records.len() as u64;
    Ok(SealedBatch {
        entry: OutboxEntry {
            info: sealed.info,
            sha256: sealed.sha256,
            md5: hex::encode(sealed.md5),
            size: sealed.bytes.len() as u64,
            sealed_at: now,
            segment_version_id: None,
            manifest: None,
            attempts: 0,
        },
        lane: batch.lane,
        lane_next_seq: batch.first_seq + n,
        run,
    })
}

/// Commits a sealed batch to the state (in `batch_idx` order), then makes its idempotency
/// run visible.
pub fn commit(state: &State, index: &Index, sealed: SealedBatch) -> Result<OutboxEntry, SealError> {
    state.commit_seal(SealCommit {
        entry: &sealed.entry,
        lane: &sealed.lane,
        lane_next_seq: sealed.lane_next_seq,
    })?;
    let batch_idx = sealed.entry.info.batch_idx;
    index
        .publish(sealed.run)
        .map_err(|source| SealError::Index { batch_idx, source })?;
    Ok(sealed.entry)
}
