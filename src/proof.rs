//! Offline proof bundles: one event, and everything needed to check — with no access to the
//! archive — that it is exactly what was archived on its day and that the day's record has
//! not been rewritten since (docs/FORMAT.md §12).
//!
//! ```text
//! event (canonical bytes) ──leaf──▶ segment root (in the manifest)      segment_proof
//! manifest (stored bytes) ──leaf──▶ daily root (in the signed anchor)   day_proof
//! anchor ──Ed25519──▶ public key
//! ```

use std::sync::Arc;

use crate::anchor::{DayManifests, StoredAnchor};
use crate::layout::Layout;
use crate::manifest::Manifest;
use crate::merkle::{self, Hash};
use crate::note::VerifierKey;
use crate::store::WormStore;
use crate::timestamp::{Day, Timestamp};

pub const PROOF_FORMAT: &str = "wormvault.proof.v1";

/// The bundle `wormvault prove` writes, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofBundle {
    pub format: String,
    pub event_id: String,
    /// The event's canonical bytes (RFC 8785 JSON), as stored in its segment.
    pub event: String,
    pub segment_key: String,
    /// The event's row in the segment (0-based), the leaf index in the segment's tree.
    pub leaf_index: u64,
    /// RFC 9162 inclusion proof of the event in the segment root, hex.
    pub segment_proof: Vec<String>,
    pub manifest_key: String,
    /// The manifest's stored bytes.
    pub manifest: String,
    /// The manifest's position among its day's manifests, in key order.
    pub manifest_index: u64,
    /// RFC 9162 inclusion proof of the manifest in the daily root, hex.
    pub day_proof: Vec<String>,
    pub anchor_key: String,
    /// The day's anchor: a C2SP signed note.
    pub anchor: String,
    /// The public key that signed the anchor, `name+keyid+base64`.
    pub public_key: String,
}

/// What a bundle proves, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proven {
    pub event_id: String,
    pub occurred_at: String,
    pub day: Day,
    pub segment_key: String,
    pub origin: String,
    pub signed_by: String,
    /// True when the event occurred before the day it was archived on (a late event).
    pub late: bool,
}

fn hashes(v: &[String], what: &str) -> Result<Vec<Hash>, String> {
    v.iter()
        .enumerate()
        .map(|(i, h)| {
            let mut out = [0u8; 32];
            if h.len() != 64 || h.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("{what}[{i}] is not 64 lower-case hex digits"));
            }
            hex::decode_to_slice(h, &mut out)
                .map_err(|_| format!("{what}[{i}] is not 64 lower-case hex digits"))?;
            Ok(out)
        })
        .collect()
}

/// Checks a bundle with no access to the store. With `pinned` keys, the anchor must be signed
/// by one of them; otherwise by the bundle's own key (compare its id with the firm's
/// published key).
pub fn verify(bundle: &ProofBundle, pinned: &[VerifierKey]) -> Result<Proven, String> {
    if bundle.format != PROOF_FORMAT {
        return Err(format!("unknown proof format {:?}", bundle.format));
    }
    // 1. The event.
    let event: serde_json::Value =
        serde_json::from_str(&bundle.event).map_err(|e| format!("the event is not JSON: {e}"))?;
    if event.get("event_id").and_then(|v| v.as_str()) != Some(bundle.event_id.as_str()) {
        return Err("the event's event_id is not the one the bundle names".into());
    }
    let occurred_at = event
        .get("occurred_at")
        .and_then(|v| v.as_str())
        .and_then(|s| Timestamp::parse_rfc3339(s).ok())
        .ok_or("the event has no valid occurred_at")?;
    let leaf = merkle::leaf_hash(bundle.event.as_bytes());
    // 2. The event is in the segment the manifest describes.
    let manifest = Manifest::from_bytes(bundle.manifest.as_bytes())?;
    if manifest.segment.key != bundle.segment_key {
        return Err("the manifest names a different segment".into());
    }
    let segment_proof = hashes(&bundle.segment_proof, "segment_proof")?;
    if !merkle::verify_inclusion(
        bundle.leaf_index,
        manifest.info.n_events,
        &leaf,
        &segment_proof,
        &manifest.info.merkle_root,
    ) {
        return Err("the event is not in the segment's Merkle root (inclusion proof fails)".into());
    }
    // 3. The anchor is signed by the key.
    let key = VerifierKey::parse(&bundle.public_key).map_err(|e| format!("public_key: {e}"))?;
    if !pinned.is_empty() && !pinned.contains(&key) {
        return Err(format!(
            "the anchor's key {} is not one of the keys given",
            bundle.public_key
        ));
    }
    let anchor: StoredAnchor = crate::anchor::open_anchor(
        &bundle.anchor_key,
        bytes::Bytes::from(bundle.anchor.clone().into_bytes()),
        std::slice::from_ref(&key),
    )
    .map_err(|e| format!("the anchor: {e}"))?;
    // 4. The manifest is in the daily root the anchor signs.
    let day_proof = hashes(&bundle.day_proof, "day_proof")?;
    if !merkle::verify_inclusion(
        bundle.manifest_index,
        anchor.body.size,
        &merkle::leaf_hash(bundle.manifest.as_bytes()),
        &day_proof,
        &anchor.body.root,
    ) {
        return Err(
            "the manifest is not in the anchored daily root (inclusion proof fails)".into(),
        );
    }
    let day = anchor.body.day;
    if manifest.info.day != day {
        return Err(format!(
            "the manifest is of {} but the anchor of {day}",
            manifest.info.day
        ));
    }
    // The keys, as the layout builds them under any prefix.
    let bare = Layout::new("");
    let manifest_suffix = bare.manifest(day, &manifest.info.writer, manifest.info.batch_idx);
    if !bundle.manifest_key.ends_with(&manifest_suffix)
        || !bundle.anchor_key.ends_with(&bare.anchor(day))
    {
        return Err("the keys in the bundle do not match the manifest and the anchor".into());
    }
    if occurred_at.day() > day {
        return Err(format!(
            "the event occurred on {} but was archived on {day}",
            occurred_at.day()
        ));
    }
    Ok(Proven {
        event_id: bundle.event_id.clone(),
        occurred_at: occurred_at.to_string(),
        day,
        segment_key: bundle.segment_key.clone(),
        origin: anchor.body.origin,
        signed_by: bundle.public_key.clone(),
        late: occurred_at.day() < day,
    })
}

/// An event found in a segment: its row, canonical bytes, and the segment's leaves.
type Found = (usize, Vec<u8>, Vec<Hash>);

/// What proving events of one day needs: the day's manifests, their leaves, and its anchor
/// (checked to be over exactly those manifests).
pub struct DayProofs {
    pub manifests: DayManifests,
    leaves: Vec<Hash>,
    tree: merkle::Tree,
    anchor: StoredAnchor,
    public_key: String,
}

impl DayProofs {
    /// Reads the day; an error if it is not anchored or its anchor does not match.
    pub async fn load(
        store: &Arc<dyn WormStore>,
        layout: &Layout,
        keys: &[VerifierKey],
        day: Day,
    ) -> Result<DayProofs, String> {
        let manifests = DayManifests::read(store, layout, day)
            .await
            .map_err(|e| e.to_string())?;
        let anchor = crate::anchor::read_anchor(store, layout, day, keys)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{day} is not anchored yet; run `wormvault anchor --day {day}` (or wait for the daemon) and try again"
                )
            })?;
        let leaves = manifests.leaves();
        let tree = merkle::Tree::from_leaf_hashes(&leaves);
        if anchor.body.size != leaves.len() as u64 || anchor.body.root != tree.root() {
            return Err(format!(
                "the anchor of {day} does not match the day's manifests (run `wormvault verify`)"
            ));
        }
        let public_key = keys
            .iter()
            .find(|k| k.name == anchor.signed_by.0 && k.id == anchor.signed_by.1)
            .expect("the anchor opened with one of these keys")
            .to_string();
        Ok(DayProofs {
            manifests,
            leaves,
            tree,
            anchor,
            public_key,
        })
    }

    /// The position of the manifest of `segment_key` among the day's manifests.
    pub fn manifest_of(&self, segment_key: &str) -> Option<(usize, Manifest)> {
        self.manifests
            .manifests
            .iter()
            .enumerate()
            .find_map(|(i, (_, b))| {
                Manifest::from_bytes(b)
                    .ok()
                    .filter(|m| m.segment.key == segment_key)
                    .map(|m| (i, m))
            })
    }

    pub fn anchor(&self) -> &StoredAnchor {
        &self.anchor
    }

    /// The verifier key whose signature is on the day's anchor.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The bundle of row `row` (with `canonical` bytes) of the segment of manifest `index`,
    /// whose rows' leaves make `segment_tree`.
    pub fn bundle(
        &self,
        index: usize,
        segment_tree: &merkle::Tree,
        row: usize,
        canonical: &[u8],
    ) -> Result<ProofBundle, String> {
        debug_assert_eq!(self.leaves.len(), self.tree.size());
        let (mkey, mbytes) = &self.manifests.manifests[index];
        let m = Manifest::from_bytes(mbytes)?;
        let event: serde_json::Value =
            serde_json::from_slice(canonical).map_err(|e| format!("stored event: {e}"))?;
        if row >= segment_tree.size() {
            return Err(format!("{} has no row {row}", m.segment.key));
        }
        let segment_proof = segment_tree.inclusion_proof(row);
        Ok(ProofBundle {
            format: PROOF_FORMAT.into(),
            event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
            event: String::from_utf8(canonical.to_vec())
                .map_err(|_| "the stored canonical bytes are not UTF-8")?,
            segment_key: m.segment.key.clone(),
            leaf_index: row as u64,
            segment_proof: segment_proof.iter().map(hex::encode).collect(),
            manifest_key: mkey.clone(),
            manifest: String::from_utf8(mbytes.to_vec())
                .map_err(|_| "the manifest is not UTF-8")?,
            manifest_index: index as u64,
            day_proof: self
                .tree
                .inclusion_proof(index)
                .iter()
                .map(hex::encode)
                .collect(),
            anchor_key: self.anchor.key.clone(),
            anchor: String::from_utf8(self.anchor.bytes.to_vec())
                .map_err(|_| "the anchor is not UTF-8")?,
            public_key: self.public_key.clone(),
        })
    }
}

/// Finds `event_id` in the archive and builds its bundle. `near` narrows the search to
/// segments whose events occurred around that day (a late event is found in a later day).
pub async fn prove(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    keys: &[VerifierKey],
    event_id: &str,
    near: Option<Day>,
) -> Result<ProofBundle, String> {
    let days: Vec<Day> = crate::retrieve::manifest_days(store, layout)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|d| near.is_none_or(|n| *d >= n))
        .collect();
    for day in days {
        let manifests = DayManifests::read(store, layout, day)
            .await
            .map_err(|e| e.to_string())?;
        for (index, (_, mbytes)) in manifests.manifests.iter().enumerate() {
            let Ok(m) = Manifest::from_bytes(mbytes) else {
                continue;
            };
            if let Some(n) = near
                && (m.info.first_occurred_at.day() > n || m.info.last_occurred_at.day() < n)
            {
                continue;
            }
            let bytes = store
                .get(&m.segment.key, Some(&m.segment.version_id))
                .await
                .map_err(|e| e.to_string())?;
            let found = tokio::task::spawn_blocking({
                let event_id = event_id.to_owned();
                move || -> Result<Option<Found>, String> {
                    let seg = crate::segment::read_segment(bytes)?;
                    let Some(row) = seg.rows.iter().position(|r| r.event_id == event_id) else {
                        return Ok(None);
                    };
                    let leaves: Vec<Hash> = seg
                        .rows
                        .iter()
                        .map(|r| merkle::leaf_hash(&r.canonical))
                        .collect();
                    Ok(Some((row, seg.rows[row].canonical.clone(), leaves)))
                }
            })
            .await
            .expect("segment search task")?;
            let Some((row, canonical, leaves)) = found else {
                continue;
            };
            let day_proofs = DayProofs::load(store, layout, keys, day)
                .await
                .map_err(|e| format!("{event_id} is in {}, but {e}", m.segment.key))?;
            return day_proofs.bundle(
                index,
                &merkle::Tree::from_leaf_hashes(&leaves),
                row,
                &canonical,
            );
        }
    }
    Err(format!("no event {event_id:?} in the archive"))
}
