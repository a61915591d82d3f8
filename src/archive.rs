//! An archive opened for writing: settings, store, local state and writer id, assembled once.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use crate::config::{Settings, StoreSettings};
use crate::event::Limits;
use crate::index::Index;
use crate::layout::{KeyKind, WriterId};
use crate::seal::SealContext;
use crate::state::State;
use crate::store::WormStore;
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;
use crate::timestamp::{Day, Timestamp};
use crate::upload::Uploader;

/// Page cache of the small state database (lanes, outbox, chain head).
const STATE_CACHE_BYTES: usize = 8 << 20;

/// Why an archive could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("opening the store: {0}")]
    Store(String),
    #[error("{0}")]
    Writer(String),
}

/// The writer side of an archive.
pub struct Archive {
    pub settings: Settings,
    pub store: Arc<dyn WormStore>,
    pub state: Arc<State>,
    pub index: Arc<Index>,
    pub writer: WriterId,
    /// Which days still take events (late events go to the current day once theirs is
    /// anchored); shared with the daemon's anchoring loop.
    pub gate: crate::batch::DayGate,
}

/// Opens the configured store.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn WormStore>, OpenError> {
    open_store_at(&settings.store).await
}

/// Opens a store from its settings.
pub async fn open_store_at(store: &StoreSettings) -> Result<Arc<dyn WormStore>, OpenError> {
    Ok(match store {
        StoreSettings::Local { path } => Arc::new(
            LocalStore::open(path)
                .map_err(|e| OpenError::Store(format!("{}: {e}", path.display())))?,
        ),
        StoreSettings::S3(s3) => Arc::new(S3Store::connect(s3).await),
    })
}

impl Archive {
    /// Opens the store and the state, and settles the writer id: the configured one, else the
    /// one kept in the state, else a new one (host name plus a random suffix), which is kept.
    pub async fn open(settings: Settings) -> Result<Archive, OpenError> {
        let store = open_store(&settings).await?;
        Self::open_with_store(settings, store).await
    }

    pub async fn open_with_store(
        settings: Settings,
        store: Arc<dyn WormStore>,
    ) -> Result<Archive, OpenError> {
        let (archive, ()) = Self::open_alongside(settings, store, |_, _| async {}).await?;
        Ok(archive)
    }

    /// [`Archive::open_with_store`], running `alongside` (given the store and the writer id)
    /// while the anchors are listed, so that a store that is slow to answer holds a start up
    /// once rather than twice (the daemon checks the bucket this way).
    pub async fn open_alongside<T, F: std::future::Future<Output = T>>(
        settings: Settings,
        store: Arc<dyn WormStore>,
        alongside: impl FnOnce(Arc<dyn WormStore>, WriterId) -> F,
    ) -> Result<(Archive, T), OpenError> {
        let state = Arc::new(State::open(&settings.state_dir, STATE_CACHE_BYTES)?);
        let index_dir = settings.state_dir.join("index");
        let index = Index::open(
            &index_dir,
            settings.index_filter_bytes,
            state.next_batch_idx()?,
            Timestamp::now().day(),
        )
        .map_err(|e| {
            OpenError::Store(format!(
                "the idempotency index in {}: {e}",
                index_dir.display()
            ))
        })?;
        let index = Arc::new(index);
        let kept = state.writer_id()?;
        let writer = match (&settings.writer_id, kept) {
            (Some(configured), Some(kept)) if *configured != kept => {
                return Err(OpenError::Writer(format!(
                    "the state directory {} belongs to writer \"{kept}\" but writer_id is configured as \"{configured}\"; \
                     each writer needs its own state directory",
                    settings.state_dir.display()
                )));
            }
            (_, Some(kept)) => kept,
            (Some(configured), None) => {
                refuse_if_writer_exists(store.as_ref(), &settings, configured).await?;
                state.set_writer_id(configured)?;
                configured.clone()
            }
            (None, None) => {
                let id = default_writer_id();
                state.set_writer_id(&id)?;
                id
            }
        };
        let gate = async {
            Ok::<_, OpenError>(match &settings.anchor {
                None => crate::batch::DayGate::open(),
                Some(a) => crate::batch::DayGate::new(
                    a.close_after,
                    anchored_through(&store, &settings.layout, &state).await?,
                ),
            })
        };
        let (gate, other) = tokio::join!(gate, alongside(store.clone(), writer.clone()));
        let archive = Archive {
            gate: gate?,
            settings,
            store,
            state,
            index,
            writer,
        };
        Ok((archive, other))
    }

    pub fn uploader(&self) -> Uploader {
        Uploader {
            store: self.store.clone(),
            state: self.state.clone(),
            layout: self.settings.layout.clone(),
            retention: self.settings.retention.clone(),
        }
    }

    pub fn seal_context(&self) -> SealContext {
        SealContext {
            writer: self.writer.clone(),
            retention: self.settings.retention.clone(),
            window_days: self.settings.window_days,
            state: self.state.clone(),
            index: self.index.clone(),
        }
    }

    /// Parsing limits as of `now`.
    pub fn limits(&self, now: Timestamp) -> Limits {
        Limits {
            max_event_bytes: self.settings.events.max_event_bytes,
            latest_occurred_at: now
                .plus_micros(self.settings.events.max_future_skew.as_micros() as i64),
        }
    }
}

/// How long opening the archive waits for the store's list of anchors before going on with
/// the last anchored day the state remembers.
const ANCHOR_LIST_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The last anchored day, for the [`crate::batch::DayGate`]: from the store, and remembered in
/// the state; when the store cannot be listed (an outage), the remembered day, so that a
/// writer starting during an outage spools events rather than refusing to start. Days closed
/// by time (`close_after`) stay closed either way; the anchor scheduler lists the store again
/// every minute and closes whatever it finds.
async fn anchored_through(
    store: &Arc<dyn WormStore>,
    layout: &crate::layout::Layout,
    state: &State,
) -> Result<Option<Day>, OpenError> {
    let listed = tokio::time::timeout(
        ANCHOR_LIST_WITHIN,
        crate::anchor::anchored_days(store, layout),
    )
    .await;
    let known = state.anchored_through()?;
    match listed {
        Ok(Ok(days)) => {
            if let Some(&last) = days.last()
                && known < Some(last)
            {
                state.set_anchored_through(last)?;
                return Ok(Some(last));
            }
        }
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "Anchors could not be listed; going on with the last anchored day this writer knows."
        ),
        Err(_) => tracing::warn!(
            within_seconds = ANCHOR_LIST_WITHIN.as_secs(),
            "The store did not list its anchors in time; going on with the last anchored day this writer knows."
        ),
    }
    Ok(known)
}

/// A fresh state with a configured writer id must not continue a chain it does not hold.
async fn refuse_if_writer_exists(
    store: &dyn WormStore,
    settings: &Settings,
    writer: &WriterId,
) -> Result<(), OpenError> {
    let listed = store.list(&settings.layout.manifests_prefix()).await;
    let entries = listed.map_err(|e| {
        OpenError::Store(format!(
            "a first start with writer_id \"{writer}\" makes sure the store holds no manifests of \
             that writer (another state directory would fork its chain), and the store could not \
             be listed: {e}; start again when the store is reachable"
        ))
    })?;
    let taken = entries.iter().any(|e| {
        matches!(settings.layout.parse(&e.key), Some(KeyKind::Manifest { writer: w, .. }) if &w == writer)
    });
    if taken {
        return Err(OpenError::Writer(format!(
            "writer \"{writer}\" already has manifests in the store but the state directory {} is new; \
             restore that writer's state directory, or configure a new writer_id",
            settings.state_dir.display()
        )));
    }
    Ok(())
}

/// The host name (sanitised) plus six random hex digits.
pub fn default_writer_id() -> WriterId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "wormvault".into());
    let mut clean: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "wormvault" } else { clean };
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    WriterId::parse(&format!("{clean}-{:06x}", random & 0xff_ffff)).expect("sanitised id is valid")
}
