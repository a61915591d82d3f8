//! `wormvault serve`: the daemon assembled — archive, sequencer, uploader, readiness checks and
//! the HTTP server — with graceful shutdown.
//!
//! Shutdown (SIGTERM or SIGINT): `/readyz` turns 503 and new requests get 503; in-flight
//! requests finish; the sequencer seals every open batch; the uploader gets until
//! `server.drain_timeout` to store them. Whatever is not stored by then stays in the spool and
//! the outbox, and the next start finishes it. The process then exits 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::archive::Archive;
use crate::auth::{Auth, Role, Token};
use crate::config::{Settings, StoreSettings};
use crate::daemon::{Command, SequencerLimits};
use crate::ingest::{PeerAddr, Readiness, Shared};
use crate::pipeline::{UploadObserver, run_uploader};
use crate::state::Lane;
use crate::telemetry::metrics as m;
use crate::upload::{UploadError, Uploaded};

/// Binds `server.listen` and serves until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&settings.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.server.listen))?;
    run(listener, settings, shutdown).await
}

struct Observer {
    commands: crossbeam_channel::Sender<Command>,
}

impl UploadObserver for Observer {
    fn uploaded(&self, batch: &Uploaded) {
        m::uploaded(batch.elapsed);
        let info = &batch.entry.info;
        let lane = Lane {
            day: info.day,
            class: info.retention_class.as_str().into(),
        };
        let _ = self.commands.send(Command::Uploaded {
            lane,
            last_seq: info.last_seq,
            batch_idx: info.batch_idx,
        });
    }

    fn failed(&self, error: &UploadError, failures: u32) {
        m::upload_error();
        if failures <= 3 || failures.is_power_of_two() {
            tracing::error!(error = %error, failures, "Uploading to the store failed; events stay in the spool and outbox, and uploads are retried with backoff.");
        }
    }

    fn recovered(&self) {
        tracing::info!("The store is reachable again; uploads resumed.");
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = m::install();
    m::started(
        settings.server.spool_max_bytes,
        settings.anchor.as_ref().map(|a| a.delay),
    );
    let development = matches!(settings.store, StoreSettings::Local { .. });
    let tokens = match (settings.server.tokens.is_empty(), development) {
        (false, _) => settings.server.tokens.clone(),
        (true, true) => vec![development_token(&settings)?],
        (true, false) => anyhow::bail!(
            "no [[auth.tokens]] are configured; create them with `wormvault token --name NAME --role ingest` \
             (only the development store runs without configured tokens)"
        ),
    };
    // The bucket check, run while the archive opens (and lists its anchors): a bucket that is
    // reachable and unfit stops the start; an unreachable or hanging one does not, nor does it
    // hold the start up for longer than `START_CHECK_WITHIN` (events are spooled; `/readyz`
    // says not ready until it passes).
    let store = crate::archive::open_store(&settings).await?;
    let (archive, checked) = Archive::open_alongside(settings.clone(), store, |store, writer| {
        let settings = settings.clone();
        async move {
            let check = crate::bucket::check_configured(&settings, &*store, &writer);
            tokio::time::timeout(START_CHECK_WITHIN, check)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {} s",
                        START_CHECK_WITHIN.as_secs()
                    ))
                })
        }
    })
    .await?;
    tracing::info!(writer = %archive.writer, store = %archive.store.describe(), "Archive opened.");
    let bucket = match checked {
        Ok(report) if report.passed => {
            tracing::info!(store = %report.store, "Bucket check passed: the bucket is fit for the archive.");
            Some(report)
        }
        Ok(report) => {
            for p in report.problems() {
                tracing::error!("Bucket check: {p}");
            }
            anyhow::bail!(
                "the bucket is not fit for a WORM archive, so the daemon does not start:\n{}",
                report.summary()
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "The bucket could not be checked (is the store reachable?); starting, not ready until the check passes.");
            None
        }
    };

    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded::<Command>(1024);
    let wake = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let limits = SequencerLimits {
        spool_max_bytes: settings.server.spool_max_bytes,
        spool_file_bytes: settings.server.spool_file_bytes,
        workers: std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4),
    };
    let sequencer = tokio::task::block_in_place(|| {
        crate::daemon::start(&archive, limits, cmd_rx, wake.clone())
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    // An upload error that retrying cannot mend (an outbox file that no longer matches its
    // digest, a store that does not lock what it stores, a broken chain) ends the uploader.
    // Events are still acknowledged into the spool, so it must not go unnoticed: `/readyz`
    // turns 503 with the error and `wormvault_uploads_halted` turns 1 until a restart.
    let halted: Arc<std::sync::OnceLock<String>> = Arc::default();
    let uploading = run_uploader(
        archive.uploader(),
        wake.clone(),
        stop.clone(),
        settings.server.backoff,
        Arc::new(Observer {
            commands: cmd_tx.clone(),
        }),
    );
    let uploader = {
        let (halted, stop) = (halted.clone(), stop.clone());
        tokio::spawn(async move {
            let result = uploading.await;
            if let Err(e) = &result
                && !stop.load(Ordering::Acquire)
            {
                let _ = halted.set(e.to_string());
                m::uploads_halted();
                tracing::error!(error = %e, "Uploads have stopped on an error that retrying cannot mend. Events are still acknowledged into the spool, but nothing more reaches the store until the cause is fixed and the daemon restarted (docs/OPERATIONS.md).");
            }
            result
        })
    };

    // Retrieval reads the same store; packages are signed with the anchor key, if this
    // daemon has it.
    let rti = crate::ingest::RtiContext {
        store: archive.store.clone(),
        layout: settings.layout.clone(),
        keys: settings
            .anchor
            .as_ref()
            .map(|a| a.accepted_keys())
            .unwrap_or_default(),
        signer: settings
            .anchor
            .as_ref()
            .and_then(|a| a.signing_key.as_ref().and(a.load_signer().ok()))
            .map(Arc::new),
    };
    let shared = Arc::new(Shared {
        rti,
        commands: cmd_tx.clone(),
        auth: Auth::new(tokens),
        retention: settings.retention.clone(),
        max_event_bytes: settings.events.max_event_bytes,
        max_future_skew: settings.events.max_future_skew,
        max_body: settings.server.max_body,
        draining: AtomicBool::new(false),
        readiness: std::sync::RwLock::new(Readiness {
            ready: false,
            store: archive.store.describe(),
            problems: vec!["not checked yet".into()],
            checked_at: None,
        }),
        metrics,
    });
    let checker = tokio::spawn(readiness_loop(
        archive.store.clone(),
        settings.clone(),
        archive.writer.clone(),
        bucket,
        shared.clone(),
        halted,
    ));
    let sweeps_stop = tokio_util::sync::CancellationToken::new();
    let anchoring = match &settings.anchor {
        None => None,
        Some(a) => {
            let anchorer = if a.signing_key.is_some() {
                Some(
                    crate::anchor::Anchorer::from_settings(&settings, archive.store.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .expect("[anchor] is configured"),
                )
            } else {
                tracing::info!(
                    "No anchor.signing_key: this daemon does not anchor; it follows the anchors other writers make."
                );
                None
            };
            Some(tokio::spawn(crate::anchor::run_scheduled(
                archive.store.clone(),
                settings.layout.clone(),
                anchorer,
                archive.state.clone(),
                a.delay,
                archive.gate.clone(),
                sweeps_stop.clone(),
            )))
        }
    };
    let sweeps = tokio::spawn(crate::sweep::run_scheduled(
        crate::sweep::Sweeper::from_settings(&settings, archive.store.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        archive.state.clone(),
        settings.sweep.clone(),
        sweeps_stop.clone(),
    ));

    let app =
        crate::ingest::router(shared.clone()).into_make_service_with_connect_info::<PeerAddr>();
    let addr = listener.local_addr()?;
    let draining = shared.clone();
    let on_shutdown = async move {
        shutdown.await;
        tracing::info!(
            "Shutting down: refusing new requests, finishing those in flight, sealing open batches."
        );
        draining.draining.store(true, Ordering::Release);
    };
    match &settings.server.tls {
        Some((cert, key)) => {
            let acceptor = tls_acceptor(cert, key)?;
            tracing::info!(%addr, "Listening (HTTPS).");
            axum::serve(
                TlsListener {
                    tcp: listener,
                    acceptor,
                },
                app,
            )
            .with_graceful_shutdown(on_shutdown)
            .await?;
        }
        None => {
            tracing::info!(%addr, "Listening (HTTP).");
            axum::serve(listener, app)
                .with_graceful_shutdown(on_shutdown)
                .await?;
        }
    }

    // Seal what is open, then give the uploader until the drain timeout.
    let _ = cmd_tx.send(Command::Shutdown);
    let _ = tokio::task::spawn_blocking(move || sequencer.join()).await;
    checker.abort();
    sweeps_stop.cancel();
    let _ = sweeps.await;
    if let Some(a) = anchoring {
        let _ = a.await;
    }
    stop.store(true, Ordering::Release);
    wake.notify_one();
    match tokio::time::timeout(settings.server.drain_timeout, uploader).await {
        Ok(Ok(Ok(()))) => tracing::info!("Everything acknowledged is sealed and in the store."),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "Exiting with sealed batches still in the outbox; the next start uploads them.")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "The uploader task failed."),
        Err(_) => tracing::warn!(
            "The drain timeout passed; sealed batches stay in the outbox and the next start uploads them."
        ),
    }
    Ok(())
}

/// How long the start-up bucket check may hold up the start.
const START_CHECK_WITHIN: Duration = Duration::from_secs(10);

/// How often the daemon proves again that a locked version cannot be deleted.
const CANARY_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Checks the bucket's configuration every 5 s and the delete probe once a day
/// ([`crate::bucket`]); `/readyz` reports the result.
async fn readiness_loop(
    store: Arc<dyn crate::store::WormStore>,
    settings: Settings,
    writer: crate::layout::WriterId,
    mut full: Option<crate::bucket::BucketReport>,
    shared: Arc<Shared>,
    uploads_halted: Arc<std::sync::OnceLock<String>>,
) {
    let min_days = settings.server.min_default_retention_days;
    let mut full_at = full.as_ref().map(|_| std::time::Instant::now());
    loop {
        let due = full_at.is_none_or(|t| t.elapsed() >= CANARY_EVERY);
        let checked = if due {
            crate::bucket::check_configured(&settings, &*store, &writer).await
        } else {
            crate::bucket::check_configuration(&*store, min_days)
                .await
                .map_err(|e| e.to_string())
        };
        let (mut ready, mut problems) = match checked {
            Ok(report) => {
                if due {
                    full_at = Some(std::time::Instant::now());
                    full = Some(report.clone());
                }
                // The delete probe's and the mirror's last results stand until the next daily
                // check.
                let mut problems = report.problems();
                if !due && let Some(f) = &full {
                    problems.extend(f.problems_of_the_whole_check());
                }
                (problems.is_empty(), problems)
            }
            Err(e) => (false, vec![format!("the store is not reachable: {e}")]),
        };
        if let Some(e) = uploads_halted.get() {
            ready = false;
            problems.push(format!(
                "uploads have stopped (restart once the cause is fixed): {e}"
            ));
        }
        let (was, first) = {
            let r = shared.readiness.read().expect("lock");
            (r.ready, r.checked_at.is_none())
        };
        if ready != was || first {
            if ready {
                tracing::info!(
                    "Ready: the store is reachable and the bucket is fit for the archive."
                );
            } else {
                tracing::error!(problems = ?problems, "Not ready: the archive cannot be written as required.");
            }
        }
        m::ready(ready);
        *shared.readiness.write().expect("lock") = Readiness {
            ready,
            store: store.describe(),
            problems,
            checked_at: Some(crate::timestamp::Timestamp::now().to_string()),
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// On the development store with no configured tokens: one local token with every role,
/// written (mode 0600) to `{state_dir}/dev-token`.
fn development_token(settings: &Settings) -> anyhow::Result<Token> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(&settings.state_dir)?;
    let path = settings.state_dir.join("dev-token");
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().starts_with("wv_") => s.trim().to_owned(),
        _ => {
            let (secret, _) = crate::auth::generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            writeln!(f, "{secret}")?;
            secret
        }
    };
    tracing::warn!(
        token_file = %path.display(),
        "No tokens are configured: using a development token with every role (ingest, compliance, admin). \
         Configure [[auth.tokens]] for anything but development."
    );
    Token::new(
        "development",
        &hex::encode(crate::merkle::sha256(secret.as_bytes())),
        &[Role::Ingest, Role::Compliance, Role::Admin],
    )
    .map_err(|e| anyhow::anyhow!(e))
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| anyhow::anyhow!("TLS certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener that completes a TLS handshake before handing the connection to axum.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
