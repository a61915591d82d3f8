//! Daily roots and their signed anchors.
//!
//! The **daily root** of UTC day D is the RFC 6962 Merkle root over the manifests stored
//! under `manifests/dt=D/` by every writer, in key order (byte-wise, which is writer id then
//! `batch_idx`); each leaf is SHA-256(0x00 ‖ the manifest's stored bytes). A day with no
//! manifests has the empty tree (size 0, root SHA-256 of nothing), so absence is provable.
//!
//! The **anchor** of D is a C2SP signed note in checkpoint form (docs/FORMAT.md §11):
//!
//! ```text
//! <origin>
//! <number of manifests>
//! <base64 daily root>
//! wormvault-day <D>
//! wormvault-prev <hex SHA-256 of the anchor of D-1, or "none" for the first anchor>
//!
//! — <key name> <base64 key id ‖ Ed25519 signature>
//! ```
//!
//! stored sealed at `anchors/dt=D/anchor.note`, create-only: of several daemons anchoring
//! the same day one write wins and the others read and check the winner's. Anchors run in day
//! order from the first day with manifests, one per day, each chained to the one before.
//!
//! **Closing a day.** Once D is anchored, nothing more may be written under `dt=D`: events
//! that occur on a closed day are *late* and go to the segments of the current day, keeping
//! their `occurred_at` ([`crate::batch::DayGate`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;

use crate::layout::Layout;
use crate::merkle::{self, Hash};
use crate::note::{NoteError, SignerKey, VerifierKey};
use crate::retention::RetentionPolicy;
use crate::store::{PutRequest, StoreError, WormStore};
use crate::telemetry::metrics as m;
use crate::timestamp::{Day, Timestamp};

/// The content type of anchors.
pub const NOTE_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// The content type of RFC 3161 time-stamp responses.
pub const TOKEN_CONTENT_TYPE: &str = "application/timestamp-reply";

/// The text of an anchor (what is signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorBody {
    pub origin: String,
    pub day: Day,
    /// The number of manifests (leaves).
    pub size: u64,
    pub root: Hash,
    /// SHA-256 of the stored anchor of the previous day; `None` for the first anchor.
    pub prev: Option<Hash>,
}

impl AnchorBody {
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\nwormvault-day {}\nwormvault-prev {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.day,
            self.prev.map_or("none".into(), hex::encode)
        )
    }

    pub fn parse(text: &str) -> Result<AnchorBody, String> {
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .ok_or("no final newline")?
            .split('\n')
            .collect();
        let [origin, size, root, day, prev] = lines[..] else {
            return Err(format!("{} lines where an anchor has 5", lines.len()));
        };
        if origin.is_empty() {
            return Err("empty origin".into());
        }
        let size: u64 = size
            .parse()
            .ok()
            .filter(|_| size == "0" || !size.starts_with('0'))
            .ok_or_else(|| format!("tree size {size:?} is not a decimal number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| format!("root {root:?} is not 32 bytes of base64"))?;
        let day = day
            .strip_prefix("wormvault-day ")
            .and_then(Day::parse)
            .ok_or_else(|| format!("bad day line {day:?}"))?;
        let prev = match prev.strip_prefix("wormvault-prev ") {
            Some("none") => None,
            Some(h) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .map_err(|_| format!("bad previous anchor hash {h:?}"))?;
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err("hashes are lower-case hex".into());
                }
                Some(out)
            }
            None => return Err(format!("bad prev line {prev:?}")),
        };
        let body = AnchorBody {
            origin: origin.to_owned(),
            day,
            size,
            root,
            prev,
        };
        if body.to_text() != text {
            return Err("not in canonical form".into());
        }
        Ok(body)
    }
}

/// One day's manifests, as the daily root sees them: keys in order and stored bytes.
pub struct DayManifests {
    pub day: Day,
    pub manifests: Vec<(String, Bytes)>,
}

impl DayManifests {
    /// Reads every current manifest under `manifests/dt=D/`, in key order.
    pub async fn read(
        store: &Arc<dyn WormStore>,
        layout: &Layout,
        day: Day,
    ) -> Result<DayManifests, StoreError> {
        let keys: Vec<String> = store
            .list(&layout.manifests_of_day(day))
            .await?
            .into_iter()
            .map(|e| e.key)
            .filter(|k| k.ends_with(".json"))
            .collect();
        let mut manifests = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for (i, key) in chunk.iter().enumerate() {
                let (store, key) = (store.clone(), key.clone());
                set.spawn(async move { (i, store.get(&key, None).await.map(|b| (key, b))) });
            }
            let mut got = vec![None; chunk.len()];
            while let Some(done) = set.join_next().await {
                let (i, r) = done.expect("manifest read task");
                got[i] = Some(r?);
            }
            manifests.extend(got.into_iter().map(|g| g.expect("every read joined")));
        }
        Ok(DayManifests { day, manifests })
    }

    pub fn leaves(&self) -> Vec<Hash> {
        self.manifests
            .iter()
            .map(|(_, b)| merkle::leaf_hash(b))
            .collect()
    }

    pub fn root(&self) -> Hash {
        merkle::root(&self.leaves())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{day} is not over yet (UTC); a day is anchored after its midnight")]
    NotOver { day: Day },
    #[error(
        "{day} comes before the first anchored day {first}; the anchor chain only grows forward"
    )]
    BeforeFirst { day: Day, first: Day },
    #[error("the stored anchor {key} is not valid: {problem}")]
    Invalid { key: String, problem: String },
    #[error("the mirror holds a different {key}; the mirror is not changed")]
    MirrorDiffers { key: String },
    #[error("indexing {day}: {problem}")]
    Index { day: Day, problem: String },
    #[error("time-stamping {key}: {problem}")]
    Timestamp { key: String, problem: String },
}

/// Another store that receives a copy of every anchor (17a-4 redundancy).
#[derive(Clone)]
pub struct Mirror {
    pub store: Arc<dyn WormStore>,
    pub layout: Layout,
}

/// What anchoring a day did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchored {
    pub day: Day,
    pub key: String,
    pub sha256: Hash,
    pub size: u64,
    pub root: Hash,
    /// False when another writer had anchored the day already.
    pub created: bool,
}

/// Makes and reads anchors.
#[derive(Clone)]
pub struct Anchorer {
    pub store: Arc<dyn WormStore>,
    pub layout: Layout,
    pub retention: Arc<RetentionPolicy>,
    pub signer: Arc<SignerKey>,
    /// Keys whose anchors are accepted (the signer's own is always among them).
    pub keys: Vec<VerifierKey>,
    pub origin: String,
    pub mirror: Option<Mirror>,
    /// An RFC 3161 time-stamp authority: its URL and certificate (DER).
    pub tsa: Option<(String, Vec<u8>)>,
}

/// The days that have an anchor in `store`, in order.
pub async fn anchored_days(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
) -> Result<BTreeSet<Day>, StoreError> {
    Ok(store
        .list_dirs(&layout.anchors_prefix())
        .await?
        .iter()
        .filter_map(|d| Layout::day_of_dir(d))
        .collect())
}

/// An anchor read from a store and checked: its stored bytes, its body, and who signed it.
#[derive(Clone, Debug)]
pub struct StoredAnchor {
    pub key: String,
    pub bytes: Bytes,
    pub body: AnchorBody,
    pub signed_by: (String, [u8; 4]),
}

/// Why a stored anchor is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum AnchorProblem {
    #[error("not UTF-8")]
    NotText,
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("{0}")]
    Body(String),
}

/// Opens an anchor's bytes with `keys`.
pub fn open_anchor(
    key: &str,
    bytes: Bytes,
    keys: &[VerifierKey],
) -> Result<StoredAnchor, AnchorProblem> {
    let text = std::str::from_utf8(&bytes).map_err(|_| AnchorProblem::NotText)?;
    let opened = crate::note::open(text, keys)?;
    let body = AnchorBody::parse(&opened.text).map_err(AnchorProblem::Body)?;
    Ok(StoredAnchor {
        key: key.to_owned(),
        body,
        signed_by: opened.signed_by,
        bytes,
    })
}

/// Reads and checks the anchor of `day` with `keys`; `None` if there is none.
pub async fn read_anchor(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    day: Day,
    keys: &[VerifierKey],
) -> Result<Option<StoredAnchor>, AnchorError> {
    let key = layout.anchor(day);
    let bytes = match store.get(&key, None).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let a = open_anchor(&key, bytes, keys).map_err(|p| AnchorError::Invalid {
        key: key.clone(),
        problem: p.to_string(),
    })?;
    if a.body.day != day {
        return Err(AnchorError::Invalid {
            key,
            problem: format!("it names day {}", a.body.day),
        });
    }
    Ok(Some(a))
}

impl Anchorer {
    /// The anchorer the settings describe (`None` when `[anchor]` is absent); opens the mirror.
    pub async fn from_settings(
        settings: &crate::config::Settings,
        store: Arc<dyn WormStore>,
    ) -> Result<Option<Anchorer>, String> {
        let Some(a) = &settings.anchor else {
            return Ok(None);
        };
        let signer = a.load_signer()?;
        let mirror = match &a.mirror {
            None => None,
            Some((s, layout)) => Some(Mirror {
                store: crate::archive::open_store_at(s)
                    .await
                    .map_err(|e| format!("anchor.mirror: {e}"))?,
                layout: layout.clone(),
            }),
        };
        Ok(Some(Anchorer {
            store,
            layout: settings.layout.clone(),
            retention: settings.retention.clone(),
            keys: a.accepted_keys(),
            origin: a.origin.clone().unwrap_or_else(|| signer.name.clone()),
            signer: Arc::new(signer),
            mirror,
            tsa: a.tsa.clone(),
        }))
    }

    /// Reads and checks the anchor of `day`; `None` if there is none.
    pub async fn read(&self, day: Day) -> Result<Option<StoredAnchor>, AnchorError> {
        read_anchor(&self.store, &self.layout, day, &self.keys).await
    }

    /// Anchors every day not yet anchored up to and including `day`, in order: from the day
    /// after the last anchor, or, for the first anchor, from the first day with manifests
    /// (with no records up to `day`, there is nothing to anchor yet).
    pub async fn anchor_through(&self, day: Day) -> Result<Vec<Anchored>, AnchorError> {
        if day >= Timestamp::now().day() {
            return Err(AnchorError::NotOver { day });
        }
        let anchored = anchored_days(&self.store, &self.layout).await?;
        let (start, mut prev) = match anchored.last() {
            Some(&last) if day <= last => {
                if let Some(&first) = anchored.first()
                    && day < first
                {
                    return Err(AnchorError::BeforeFirst { day, first });
                }
                let a = self.read(day).await?.ok_or(AnchorError::Invalid {
                    key: self.layout.anchor(day),
                    problem: "missing inside the chain (a sweep reports it)".into(),
                })?;
                self.finish_day(day, &a.bytes, None).await?;
                return Ok(vec![Anchored {
                    day,
                    key: a.key,
                    sha256: merkle::sha256(&a.bytes),
                    size: a.body.size,
                    root: a.body.root,
                    created: false,
                }]);
            }
            Some(&last) => {
                let a = self.read(last).await?.ok_or(AnchorError::Invalid {
                    key: self.layout.anchor(last),
                    problem: "listed but not readable".into(),
                })?;
                (last.next(), Some(merkle::sha256(&a.bytes)))
            }
            None => {
                // The chain starts on the first day with records; before it there is
                // nothing to anchor.
                let first = self
                    .store
                    .list_dirs(&self.layout.manifests_prefix())
                    .await?
                    .iter()
                    .filter_map(|d| Layout::day_of_dir(d))
                    .next();
                match first {
                    Some(f) if f <= day => (f, None),
                    _ => return Ok(Vec::new()),
                }
            }
        };
        let mut out = Vec::new();
        let mut d = start;
        while d <= day {
            let a = self.anchor_day(d, prev).await?;
            prev = Some(a.sha256);
            out.push(a);
            d = d.next();
        }
        Ok(out)
    }

    /// Computes, signs and stores the anchor of `day` (create-only), then mirrors it.
    async fn anchor_day(&self, day: Day, prev: Option<Hash>) -> Result<Anchored, AnchorError> {
        let manifests = DayManifests::read(&self.store, &self.layout, day).await?;
        let body = AnchorBody {
            origin: self.origin.clone(),
            day,
            size: manifests.manifests.len() as u64,
            root: manifests.root(),
            prev,
        };
        let note = self.signer.sign(&body.to_text());
        let key = self.layout.anchor(day);
        let until = self.until(day);
        let req = PutRequest::new(
            key.clone(),
            Bytes::from(note.into_bytes()),
            until,
            NOTE_CONTENT_TYPE,
        );
        let (bytes, body, created) = match self.store.put_sealed(&req).await {
            Ok(_) => (req.body.clone(), body, true),
            Err(StoreError::AlreadyExists { .. }) => {
                // Another writer anchored the day first: theirs stands, if it is valid.
                let a = self.read(day).await?.ok_or(AnchorError::Invalid {
                    key: key.clone(),
                    problem: "exists but cannot be read".into(),
                })?;
                tracing::info!(day = %day, key = %key, signed_by = %a.signed_by.0, "The day was already anchored by another writer.");
                (a.bytes, a.body, false)
            }
            Err(e) => return Err(e.into()),
        };
        if created {
            tracing::info!(day = %day, key = %key, manifests = body.size, root = %hex::encode(body.root), "Anchored the day.");
        }
        // The index is built from the manifests the anchor was computed over, when the anchor
        // is ours; another writer's anchor may cover other manifests, so read them again.
        self.finish_day(day, &bytes, created.then_some(&manifests))
            .await?;
        Ok(Anchored {
            day,
            key,
            sha256: merkle::sha256(&bytes),
            size: body.size,
            root: body.root,
            created,
        })
    }
}

impl Anchorer {
    /// How long the anchor of `day` and its token are locked: as long as any record of the
    /// day can be kept (the longest class, from the day's end).
    pub fn until(&self, day: Day) -> Timestamp {
        self.retention
            .longest_from(day.next().start())
            .ceil_to_second()
    }

    /// Writes `bytes` to the mirror at `key` (if there is a mirror); identical bytes already
    /// there are fine, different ones are an error.
    async fn mirror_copy(
        &self,
        key: Option<String>,
        bytes: &Bytes,
        until: Timestamp,
        content_type: &'static str,
    ) -> Result<(), AnchorError> {
        let (Some(m), Some(key)) = (&self.mirror, key) else {
            return Ok(());
        };
        let req = PutRequest::new(key, bytes.clone(), until, content_type);
        match crate::store::put_or_confirm(m.store.as_ref(), &req, false).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { key }) => Err(AnchorError::MirrorDiffers { key }),
            Err(e) => Err(e.into()),
        }
    }

    /// Everything that follows the anchor of `day` (stored as `anchor`): its copy on the
    /// mirror, its time-stamp token (and the token's copy), the day's record index. Each step
    /// is idempotent, so after any failure the whole is simply run again.
    pub async fn finish_day(
        &self,
        day: Day,
        anchor: &Bytes,
        manifests: Option<&DayManifests>,
    ) -> Result<(), AnchorError> {
        let until = self.until(day);
        self.mirror_copy(
            m_key(&self.mirror, |l| l.anchor(day)),
            anchor,
            until,
            NOTE_CONTENT_TYPE,
        )
        .await?;
        self.ensure_timestamp(day, anchor, until).await?;
        if self.tsa.is_some() && self.mirror.is_some() {
            let token = self
                .store
                .get(&self.layout.anchor_timestamp(day), None)
                .await?;
            self.mirror_copy(
                m_key(&self.mirror, |l| l.anchor_timestamp(day)),
                &token,
                until,
                TOKEN_CONTENT_TYPE,
            )
            .await?;
        }
        crate::retrieve::ensure_index(&self.store, &self.layout, until, day, manifests)
            .await
            .map(|_| ())
            .map_err(|problem| AnchorError::Index { day, problem })
    }

    /// Has the TSA stamp the anchor of `day` unless a token is already stored. Without a TSA
    /// configured, does nothing.
    async fn ensure_timestamp(
        &self,
        day: Day,
        anchor: &Bytes,
        until: Timestamp,
    ) -> Result<(), AnchorError> {
        let Some((url, cert)) = &self.tsa else {
            return Ok(());
        };
        let key = self.layout.anchor_timestamp(day);
        match self.store.head(&key, None).await {
            Ok(_) => return Ok(()),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let (token, stamp) = crate::tsa::stamp(url, &merkle::sha256(anchor), cert)
            .await
            .map_err(|problem| AnchorError::Timestamp {
                key: key.clone(),
                problem,
            })?;
        let req = PutRequest::new(key.clone(), token, until, TOKEN_CONTENT_TYPE);
        match self.store.put_sealed(&req).await {
            // Another writer stamped it first; theirs stands.
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(day = %day, key = %key, gen_time = %stamp.gen_time, "Time-stamped the anchor.");
        Ok(())
    }
}

/// The mirror's key for an object, built with the mirror's own layout.
fn m_key(mirror: &Option<Mirror>, key: impl Fn(&Layout) -> String) -> Option<String> {
    mirror.as_ref().map(|m| key(&m.layout))
}

/// The daemon's anchoring loop. Every minute it learns which days are anchored (by any
/// writer) and closes them in `gate`, so late events go to the current day. With an
/// `anchorer` it also anchors, once `delay` has passed after each UTC midnight, every day up
/// to yesterday — but never a day for which this writer still holds sealed batches in its
/// outbox (in `state`): those wait for the store to come back — and finishes the last week's
/// anchored days (mirror, token, index) where a step failed. The last anchored day is also
/// kept in `state`, for a start while the store cannot be listed. Runs until `stop` is
/// cancelled.
pub async fn run_scheduled(
    store: Arc<dyn WormStore>,
    layout: Layout,
    anchorer: Option<Anchorer>,
    state: Arc<crate::state::State>,
    delay: std::time::Duration,
    gate: crate::batch::DayGate,
    stop: tokio_util::sync::CancellationToken,
) {
    let delay_micros = delay.as_micros() as i64;
    // Days whose anchor this process saw finished; the others of the last week are retried.
    let mut finished = BTreeSet::new();
    loop {
        // The last day whose anchoring time has come.
        let mut due = Timestamp::now().plus_micros(-delay_micros).day().prev();
        // The earliest day of this writer's batches sealed but not yet stored.
        let pending = state
            .outbox()
            .ok()
            .and_then(|o| o.iter().map(|e| e.info.day).min());
        if let Some(p) = pending
            && p <= due
        {
            tracing::warn!(waiting_for = %p, "Sealed batches of a day not yet anchored are still waiting for the store; anchoring waits for them.");
            due = p.prev();
        }
        match anchored_days(&store, &layout).await {
            Ok(days) => {
                if let Some(&last) = days.last() {
                    close_through(&gate, &state, last);
                    m::anchored_through(last);
                }
                if let Some(anchorer) = &anchorer {
                    for &d in days.iter().rev().take(7) {
                        if finished.contains(&d) {
                            continue;
                        }
                        let done = match anchorer.read(d).await {
                            Ok(Some(a)) => anchorer.finish_day(d, &a.bytes, None).await,
                            Ok(None) => Ok(()),
                            Err(e) => Err(e),
                        };
                        match done {
                            Ok(()) => {
                                finished.insert(d);
                            }
                            Err(e) => {
                                m::anchor_failed();
                                tracing::error!(error = %e, day = %d, "Finishing an anchored day (mirror, time-stamp, index) failed; retrying in a minute.");
                                break;
                            }
                        }
                    }
                }
                if let Some(anchorer) = &anchorer
                    && days.last().is_none_or(|&l| l < due)
                {
                    match anchorer.anchor_through(due).await {
                        Ok(done) => {
                            finished.extend(done.iter().map(|a| a.day));
                            if let Some(a) = done.last() {
                                close_through(&gate, &state, a.day);
                                m::anchored_through(a.day);
                            }
                        }
                        Err(e) => {
                            m::anchor_failed();
                            tracing::error!(error = %e, day = %due, "Anchoring failed; retrying in a minute.")
                        }
                    }
                }
            }
            Err(e) => {
                m::anchor_failed();
                tracing::warn!(error = %e, "Could not list anchors; retrying in a minute.")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

/// Closes every day up to `day` in `gate`, and remembers it in `state` when that is news (the
/// gate starts from what the state remembers, so nothing is written minute after minute).
fn close_through(gate: &crate::batch::DayGate, state: &crate::state::State, day: Day) {
    if !gate.close_through(day) {
        return;
    }
    if let Err(e) = state.set_anchored_through(day) {
        tracing::warn!(error = %e, day = %day, "Could not record the last anchored day in the state.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_bodies_round_trip_and_refuse_variants() {
        let body = AnchorBody {
            origin: "archive.example.com/wormvault".into(),
            day: Day::parse("2026-11-20").unwrap(),
            size: 3,
            root: merkle::sha256(b"x"),
            prev: Some(merkle::sha256(b"y")),
        };
        let text = body.to_text();
        assert_eq!(AnchorBody::parse(&text).unwrap(), body);
        assert!(text.starts_with("archive.example.com/wormvault\n3\n"));
        let first = AnchorBody {
            prev: None,
            ..body.clone()
        };
        assert!(first.to_text().ends_with("wormvault-prev none\n"));
        assert_eq!(AnchorBody::parse(&first.to_text()).unwrap(), first);
        for bad in [
            text.replace("\n3\n", "\n03\n"),
            text.replace("wormvault-day", "day"),
            text.trim_end().to_owned(),
            format!("{text}extra\n"),
            text.replace(
                &hex::encode(merkle::sha256(b"y")),
                &hex::encode(merkle::sha256(b"y")).to_uppercase(),
            ),
        ] {
            assert!(AnchorBody::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
