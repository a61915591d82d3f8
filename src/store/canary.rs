//! The delete probe of `wormvault bucket check`.
//!
//! A bucket's configuration says what should happen; only trying shows what does. The probe
//! writes a small canary object under `preflight/`, sealed exactly as records are (COMPLIANCE,
//! retain-until one day ahead, confirmed by HEAD and a version listing), then asks the store
//! to delete that version, with the governance-bypass header, using the same credentials the
//! daemon writes with. The store must refuse, and the version must still be there.
//!
//! This is the only code in wormvault that asks a store to delete anything. It can only name
//! a key that [`Layout::is_canary`] accepts, and only the version it has just written: no
//! archived object can reach it (an architecture invariant, checked by `tests/it/tidy.rs`).

use bytes::Bytes;

use super::{PutRequest, StoreError, WormStore};
use crate::layout::{Layout, WriterId};
use crate::timestamp::Timestamp;

/// How long a canary stays locked.
const CANARY_RETENTION_MICROS: i64 = 86_400 * 1_000_000;

/// A canary to write and try to delete.
#[derive(Clone, Debug)]
pub struct Canary {
    key: String,
    body: Bytes,
    retain_until: Timestamp,
}

impl Canary {
    /// A canary for `who` (a writer id, or `cli`) at `at`.
    pub fn new(layout: &Layout, who: &WriterId, at: Timestamp) -> Canary {
        let body = serde_json::json!({
            "purpose": "wormvault bucket check: proves that a COMPLIANCE-locked version cannot be deleted with these credentials. Not a record.",
            "written_by": who.as_str(),
            "written_at": at.to_string(),
        });
        Canary {
            key: layout.canary(who, at),
            body: Bytes::from(serde_json::to_vec_pretty(&body).expect("serializable")),
            retain_until: at.plus_micros(CANARY_RETENTION_MICROS).ceil_to_second(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanaryOutcome {
    /// Written sealed, and deleting the version was refused; the version is still there.
    Undeletable {
        key: String,
        version_id: String,
        refusal: String,
    },
    /// The store took the write but did not seal it as asked (lock, retain-until, versions).
    NotSealed { key: String, problem: String },
    /// The store refused the sealed write itself (lock headers on a bucket without Object
    /// Lock, or missing rights).
    PutRefused { key: String, error: String },
    /// The locked version was deleted: the bucket or the credentials allow deleting records.
    Deleted { key: String, version_id: String },
    /// Nothing to prove: the store has no delete operation at all.
    NotApplicable(String),
}

/// The probe on an S3 store. Transient errors (the store unreachable) are returned as errors:
/// the check could not run.
pub(super) async fn probe_s3(
    store: &super::s3::S3Store,
    layout: &Layout,
    canary: &Canary,
) -> Result<CanaryOutcome, StoreError> {
    assert!(
        layout.is_canary(&canary.key),
        "the delete probe only ever targets a canary key, not {}",
        canary.key
    );
    let key = canary.key.clone();
    let req = PutRequest::new(
        key.clone(),
        canary.body.clone(),
        canary.retain_until,
        "application/json",
    );
    let receipt = match store.put_sealed(&req).await {
        Ok(r) => r,
        Err(StoreError::NotSealed { problem, .. }) => {
            return Ok(CanaryOutcome::NotSealed { key, problem });
        }
        Err(e) if e.is_transient() => return Err(e),
        Err(e) => {
            return Ok(CanaryOutcome::PutRefused {
                key,
                error: e.to_string(),
            });
        }
    };
    let version_id = receipt.version_id;
    let answer = store
        .client
        .delete_object()
        .bucket(&store.bucket)
        .key(&key)
        .version_id(&version_id)
        .bypass_governance_retention(true)
        .send()
        .await;
    let refusal = match answer {
        Ok(_) => None,
        Err(e) => match super::s3::map_err(&key, e) {
            e if e.is_transient() => return Err(e),
            e => Some(e.to_string()),
        },
    };
    // Whatever the answer, the version itself must still be there.
    let still_there = store
        .versions_of(&key)
        .await?
        .iter()
        .any(|v| v.version_id == version_id && !v.is_delete_marker);
    Ok(match (still_there, refusal) {
        (true, Some(refusal)) => CanaryOutcome::Undeletable {
            key,
            version_id,
            refusal,
        },
        (true, None) => CanaryOutcome::Undeletable {
            key,
            version_id,
            refusal: "the store answered success, but the version is still there".into(),
        },
        (false, _) => CanaryOutcome::Deleted { key, version_id },
    })
}
