//! Sealing: a closed batch becomes a segment in the local outbox, committed with the state.
//!
//! [`seal`] is pure CPU and file work (Merkle root, Parquet encoding, the outbox file and its
//! fsync) and may run on any thread; [`commit`] must be called in `batch_idx` order. Only after
//! the commit is the batch *sealed*: its events are in the idempotency index, its lane's
//! numbering has advanced, and the upload can happen at any later time, as often as needed.

use std::sync::Arc;

use crate::batch::ClosedBatch;
use crate::layout::WriterId;
use crate::retention::RetentionPolicy;
use crate::segment::{SegmentHeader, write_segment};
use crate::state::{
    DedupInsert, Lane, OutboxEntry, SealCommit, Seen, State, StateError, fingerprint,
};
use crate::timestamp::{Day, Timestamp};

/// A batch encoded and in the outbox, not yet committed.
pub struct SealedBatch {
    pub entry: OutboxEntry,
    pub lane: Lane,
    pub lane_next_seq: u64,
    dedup: Vec<DedupInsert>,
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
}

/// What sealing needs to know besides the batch.
#[derive(Clone)]
pub struct SealContext {
    pub writer: WriterId,
    pub retention: Arc<RetentionPolicy>,
    /// Idempotency window in days.
    pub window_days: u32,
    pub state: Arc<State>,
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
    let dedup = batch
        .records
        .iter()
        .map(|r| {
            let from = r.event.occurred_at.day().max(today);
            DedupInsert {
                fingerprint: fingerprint(&r.event.event_id),
                seen: Seen {
                    digest: r.digest[..16].try_into().expect("16"),
                    expires: Day::from_days_since_epoch(
                        from.days_since_epoch() + ctx.window_days as i32,
                    ),
                },
            }
        })
        .collect();
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
        dedup,
    })
}

/// Commits a sealed batch to the state (in `batch_idx` order).
pub fn commit(state: &State, sealed: SealedBatch) -> Result<OutboxEntry, StateError> {
    state.commit_seal(SealCommit {
        entry: &sealed.entry,
        lane: &sealed.lane,
        lane_next_seq: sealed.lane_next_seq,
        dedup: sealed.dedup,
    })?;
    Ok(sealed.entry)
}
