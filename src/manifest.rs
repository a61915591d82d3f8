//! Manifests: the sealed record of one batch, chained per writer.
//!
//! A manifest is an RFC 8785 canonical JSON document (see docs/FORMAT.md for every field):
//! it names its segment (key, version id, size, SHA-256, MD5), repeats the segment's
//! [`SegmentInfo`] (Merkle root, event count, sequence range, time range, retention), and
//! links to the writer's previous manifest by the SHA-256 of that manifest's stored bytes.
//!
//! Two chains make loss visible without reading any segment:
//!
//! - the **writer chain**: `batch_idx` runs 0, 1, 2, ... with no gaps, and manifest *n*
//!   carries `prev_manifest_sha256` = SHA-256 of manifest *n − 1* (`null` for 0);
//! - the **lane sequence**: within one (writer, day, retention class), segments' `seq`
//!   ranges run from 1 with no gaps or overlaps, in `batch_idx` order.

use crate::merkle::{self, Hash};
use crate::segment::SegmentInfo;
use crate::timestamp::{Day, Timestamp};

pub const MANIFEST_FORMAT: &str = "wormvault.manifest.v1";

/// Where the segment is stored and what its bytes hash to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentObject {
    pub key: String,
    /// The store's version id of the segment object.
    pub version_id: String,
    pub size: u64,
    #[serde(with = "crate::segment::hex_hash")]
    pub sha256: Hash,
    /// Lower-case hex MD5 (what `Content-MD5` carried).
    pub md5: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// SHA-256 (hex) of the writer's previous manifest's stored bytes; `null` for batch 0.
    pub prev_manifest_sha256: Option<String>,
    pub segment: SegmentObject,
    /// The segment's own description (writer, batch_idx, day, class, sequence and time ranges,
    /// Merkle root, retain-until), identical to its footer metadata.
    pub info: SegmentInfo,
    pub sealed_at: Timestamp,
    /// The manifest object's own retain-until (see [`manifest_retain_until`]).
    pub retain_until: Timestamp,
}

impl Manifest {
    pub fn new(
        segment: SegmentObject,
        info: SegmentInfo,
        prev: Option<Hash>,
        sealed_at: Timestamp,
        retain_until: Timestamp,
    ) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            prev_manifest_sha256: prev.map(hex::encode),
            segment,
            info,
            sealed_at,
            retain_until,
        }
    }

    /// The bytes stored for this manifest (its canonical JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::canonical::to_canonical_vec(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!("unknown manifest format {:?}", m.format));
        }
        Ok(m)
    }

    /// The hash the next manifest in the chain links to.
    pub fn chain_hash(bytes: &[u8]) -> Hash {
        merkle::sha256(bytes)
    }

    pub fn day(&self) -> Day {
        self.info.day
    }
}

/// A manifest is locked for the longest retention period of any class, counted like a
/// segment's (from the end of its day), and never shorter than its segment: every manifest
/// of a day, and so anything computed over them, stays verifiable as long as any record of
/// that day is retained.
pub fn manifest_retain_until(
    segment_until: Timestamp,
    longest_from_day_end: Timestamp,
) -> Timestamp {
    segment_until.max(longest_from_day_end).ceil_to_second()
}
