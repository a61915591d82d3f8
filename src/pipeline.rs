//! The back half of the pipeline, shared by `wormvault archive` and `wormvault serve`:
//! seal workers, the in-order committer, and the uploader loop.
//!
//! ```text
//! ClosedBatch ──▶ seal workers (N threads) ──▶ committer (batch_idx order) ──▶ Committed
//!                                                    │
//!                                                    └── wakes ──▶ uploader (async, backoff)
//! ```
//!
//! Closed batches go in through a bounded channel (back-pressure on the caller when sealing
//! falls behind); committed batch indexes come out, so the caller can release what it kept in
//! memory for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::archive::Archive;
use crate::batch::ClosedBatch;
use crate::seal::{SealError, SealedBatch, commit, seal};
use crate::timestamp::Timestamp;
use crate::upload::{UploadError, Uploaded, Uploader};

/// Seal workers and the committer.
pub struct SealPipeline {
    batches: Option<Sender<ClosedBatch>>,
    committed: Receiver<Result<u64, SealError>>,
    threads: Vec<JoinHandle<()>>,
}

impl SealPipeline {
    /// Starts `workers` seal threads and the committer. `on_commit` runs on the committer
    /// thread after each batch commits (wake the uploader, count metrics).
    pub fn start(
        archive: &Archive,
        workers: usize,
        on_commit: impl Fn(u64) + Send + 'static,
    ) -> SealPipeline {
        let (batch_tx, batch_rx) = bounded::<ClosedBatch>(1);
        let (sealed_tx, sealed_rx) = bounded::<Result<SealedBatch, SealError>>(workers.max(1));
        let (commit_tx, commit_rx) = unbounded::<Result<u64, SealError>>();
        let mut threads = Vec::new();
        for n in 0..workers.max(1) {
            let (rx, tx, ctx) = (batch_rx.clone(), sealed_tx.clone(), archive.seal_context());
            let t = std::thread::Builder::new()
                .name(format!("wv-seal-{n}"))
                .spawn(move || {
                    for batch in rx {
                        if tx.send(seal(batch, &ctx, Timestamp::now())).is_err() {
                            break;
                        }
                    }
                })
                .expect("thread");
            threads.push(t);
        }
        drop(sealed_tx);
        let (state, index) = (archive.state.clone(), archive.index.clone());
        let t = std::thread::Builder::new()
            .name("wv-commit".into())
            .spawn(move || {
                let mut waiting: BTreeMap<u64, SealedBatch> = BTreeMap::new();
                let Ok(mut next) = state.next_batch_idx() else {
                    return;
                };
                for sealed in sealed_rx {
                    let sealed = match sealed {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = commit_tx.send(Err(e));
                            return;
                        }
                    };
                    waiting.insert(sealed.entry.info.batch_idx, sealed);
                    while let Some(s) = waiting.remove(&next) {
                        if let Err(e) = commit(&state, &index, s) {
                            let _ = commit_tx.send(Err(e));
                            return;
                        }
                        let _ = commit_tx.send(Ok(next));
                        on_commit(next);
                        next += 1;
                    }
                }
            })
            .expect("thread");
        threads.push(t);
        SealPipeline {
            batches: Some(batch_tx),
            committed: commit_rx,
            threads,
        }
    }

    /// Hands a closed batch to the seal workers; blocks while they are all busy. `Err` means
    /// the pipeline has stopped (see [`SealPipeline::drain_committed`] for why).
    pub fn submit(&self, batch: ClosedBatch) -> Result<(), ClosedBatch> {
        match &self.batches {
            Some(tx) => tx.send(batch).map_err(|e| e.0),
            None => Err(batch),
        }
    }

    /// Batches committed since the last call (in order), or the error that stopped sealing.
    pub fn drain_committed(&self) -> Result<Vec<u64>, SealError> {
        let mut out = Vec::new();
        for c in self.committed.try_iter() {
            out.push(c?);
        }
        Ok(out)
    }

    /// Waits for the next commit, up to `timeout`.
    pub fn wait_committed(&self, timeout: Duration) -> Option<Result<u64, SealError>> {
        self.committed.recv_timeout(timeout).ok()
    }

    /// Stops accepting batches, waits for everything submitted to be sealed and committed,
    /// and returns the batch indexes committed since the last drain.
    pub fn finish(mut self) -> Result<Vec<u64>, SealError> {
        self.batches = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.drain_committed()
    }
}

/// Backoff between upload attempts while the store is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures: exponential, capped, with ±25 % jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter = (r % 500) as f64 / 1000.0 - 0.25; // -0.25 ..= +0.249
        base.mul_f64(1.0 + jitter)
    }
}

/// What the uploader loop reports.
pub trait UploadObserver: Send + Sync + 'static {
    fn uploaded(&self, batch: &Uploaded);
    fn failed(&self, error: &UploadError, failures: u32);
    fn recovered(&self) {}
}

/// Runs the uploader until `stop` is set and the outbox is drained (or the store stays
/// unreachable past the last attempt after `stop`). Wakes on `wake`, retries with backoff.
pub async fn run_uploader(
    uploader: Uploader,
    wake: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    backoff: Backoff,
    observer: Arc<dyn UploadObserver>,
) -> Result<(), UploadError> {
    let mut failures = 0u32;
    loop {
        let (done, result) = uploader.drain().await;
        for u in &done {
            observer.uploaded(u);
        }
        match result {
            Ok(()) => {
                if failures > 0 {
                    observer.recovered();
                }
                failures = 0;
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                wake.notified().await;
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                observer.failed(&e, failures);
                if stop.load(Ordering::Acquire) {
                    return Err(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.delay(failures - 1)) => {}
                    _ = wake.notified() => {}
                }
            }
            Err(e) => {
                observer.failed(&e, failures + 1);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for f in 0..20 {
            let d = b.delay(f).as_secs_f64();
            let base = (0.1 * f64::from(1u32 << f.min(16))).min(2.0);
            assert!(d >= base * 0.749 && d <= base * 1.25, "{f}: {d} vs {base}");
        }
    }
}
