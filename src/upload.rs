//! Uploading: outbox entries go to the store in `batch_idx` order, each as segment, then
//! manifest, then chain head.
//!
//! For each entry:
//!
//! 1. the segment bytes are read from the outbox and checked against the SHA-256 recorded at
//!    sealing (local corruption is an error, never uploaded), then written sealed
//!    ([`put_or_confirm`]: create-only, COMPLIANCE, checksums, verified after);
//! 2. the manifest is built — naming the segment's version id and linking to the previous
//!    manifest's hash — and saved in the outbox entry before it is written, so that a retry
//!    writes the very same bytes;
//! 3. the manifest is written sealed, and the state records the new chain head and forgets
//!    the entry and its file.
//!
//! Every step is idempotent: a crash at any point is followed by a retry that finds what the
//! previous attempt stored (same key, same bytes) and accepts it. An attempt counter makes
//! retries HEAD before PUT, so servers that ignore `If-None-Match` get no second version.

use std::sync::Arc;

use bytes::Bytes;

use crate::layout::Layout;
use crate::manifest::{Manifest, SegmentObject, manifest_retain_until};
use crate::merkle;
use crate::retention::RetentionPolicy;
use crate::state::{ChainHead, OutboxEntry, State, StateError};
use crate::store::{PutRequest, StoreError, WormStore, put_or_confirm};

/// A batch confirmed in the store.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub entry: OutboxEntry,
    pub segment_key: String,
    pub manifest_key: String,
    pub manifest_sha256: String,
    /// Time to store and verify the segment and its manifest.
    pub elapsed: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "outbox file of batch {batch_idx} does not match the SHA-256 recorded when it was sealed; it is not uploaded"
    )]
    Corrupt { batch_idx: u64 },
    #[error("the manifest chain is inconsistent: {0}")]
    Chain(String),
}

impl UploadError {
    /// Whether retrying later can succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, UploadError::Store(e) if e.is_transient())
    }
}

/// Moves sealed batches from the outbox into the store.
#[derive(Clone)]
pub struct Uploader {
    pub store: Arc<dyn WormStore>,
    pub state: Arc<State>,
    pub layout: Layout,
    pub retention: Arc<RetentionPolicy>,
}

impl Uploader {
    /// Uploads every pending outbox entry, in order, stopping at the first error. What was
    /// uploaded before the error is returned inside `Ok` of the first tuple element.
    pub async fn drain(&self) -> (Vec<Uploaded>, Result<(), UploadError>) {
        let mut done = Vec::new();
        let entries = match self.state.outbox() {
            Ok(e) => e,
            Err(e) => return (done, Err(e.into())),
        };
        for entry in entries {
            match self.upload_one(entry).await {
                Ok(u) => done.push(u),
                Err(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    async fn upload_one(&self, mut entry: OutboxEntry) -> Result<Uploaded, UploadError> {
        let started = std::time::Instant::now();
        let info = entry.info.clone();
        let segment_key = self.layout.segment(info.day, &info.writer, info.batch_idx);
        let manifest_key = self.layout.manifest(info.day, &info.writer, info.batch_idx);

        if entry.segment_version_id.is_none() {
            let bytes = Bytes::from(self.state.read_outbox_file(info.batch_idx)?);
            if merkle::sha256(&bytes) != entry.sha256 {
                return Err(UploadError::Corrupt {
                    batch_idx: info.batch_idx,
                });
            }
            let mut md5 = [0u8; 16];
            hex::decode_to_slice(&entry.md5, &mut md5).map_err(|_| UploadError::Corrupt {
                batch_idx: info.batch_idx,
            })?;
            let req = PutRequest::with_digests(
                segment_key.clone(),
                bytes,
                entry.sha256,
                md5,
                info.retain_until,
                "application/vnd.apache.parquet",
            );
            let maybe_exists = entry.attempts > 0;
            entry.attempts += 1;
            self.state.update_outbox(&entry)?;
            let receipt = put_or_confirm(self.store.as_ref(), &req, maybe_exists).await?;
            entry.segment_version_id = Some(receipt.version_id);
            self.state.update_outbox(&entry)?;
        }

        let manifest_bytes = match &entry.manifest {
            Some(m) => m.clone().into_bytes(),
            None => {
                let prev = self.state.chain_head()?;
                let prev_hash = match (info.batch_idx, prev) {
                    (0, None) => None,
                    (idx, Some(head)) if head.batch_idx + 1 == idx => {
                        let mut h = [0u8; 32];
                        hex::decode_to_slice(&head.manifest_sha256, &mut h)
                            .map_err(|_| UploadError::Chain("chain head hash is not hex".into()))?;
                        Some(h)
                    }
                    (idx, head) => {
                        return Err(UploadError::Chain(format!(
                            "batch {idx} follows chain head {:?}",
                            head.map(|h| h.batch_idx)
                        )));
                    }
                };
                let segment = SegmentObject {
                    key: segment_key.clone(),
                    version_id: entry.segment_version_id.clone().expect("segment stored"),
                    size: entry.size,
                    sha256: entry.sha256,
                    md5: entry.md5.clone(),
                };
                let manifest_until = manifest_retain_until(
                    info.retain_until,
                    self.retention.longest_from(info.day.next().start()),
                );
                let manifest = Manifest::new(
                    segment,
                    info.clone(),
                    prev_hash,
                    entry.sealed_at,
                    manifest_until,
                );
                let bytes = manifest.to_bytes();
                entry.manifest = Some(String::from_utf8(bytes.clone()).expect("JSON is UTF-8"));
                self.state.update_outbox(&entry)?;
                bytes
            }
        };
        let manifest = Manifest::from_bytes(&manifest_bytes).map_err(UploadError::Chain)?;
        let req = PutRequest::new(
            manifest_key.clone(),
            Bytes::from(manifest_bytes),
            manifest.retain_until,
            "application/json",
        );
        let maybe_exists = entry.attempts > 1;
        entry.attempts += 1;
        self.state.update_outbox(&entry)?;
        put_or_confirm(self.store.as_ref(), &req, maybe_exists).await?;
        let manifest_sha256 = hex::encode(req.sha256);
        self.state.complete_upload(
            info.batch_idx,
            &ChainHead {
                batch_idx: info.batch_idx,
                manifest_key: manifest_key.clone(),
                manifest_sha256: manifest_sha256.clone(),
            },
        )?;
        tracing::debug!(segment = %segment_key, manifest = %manifest_key, n_events = info.n_events, "Batch archived.");
        Ok(Uploaded {
            entry,
            segment_key,
            manifest_key,
            manifest_sha256,
            elapsed: started.elapsed(),
        })
    }
}
