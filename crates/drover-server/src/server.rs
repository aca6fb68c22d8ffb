//! Starting and stopping the control plane: data dir, CA, admin token, store, the two listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_types::LivenessPolicy;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fleet::{Fleet, FleetConfig};
use crate::gateway::limits::UnprovenLimits;
use crate::gateway::{Gateway, tls};
use crate::http::{self as api, ApiTls, ApiTlsError, HttpState};
use crate::memory;
use crate::metrics::{ServerMetrics, TimedStore};
use crate::pki::{CA_CERT_FILE, Pki, PkiError};
use crate::store::{MetricsHistory, PgStore, SqliteStore, Store, StoreError};
use drover_files::create_private_dir;

pub use crate::admin_token::ADMIN_TOKEN_FILE;
pub const DB_FILE: &str = "drover.db";
/// Held locked (`flock`) by the server running on a data dir, so `drover migrate` and a second server can
/// tell; the kernel releases it when the process ends, however it ends.
pub const LOCK_FILE: &str = "server.lock";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// A `postgres://` URL: keep the fleet's records in PostgreSQL instead of SQLite in the data dir (the
    /// CA and the admin token stay in the data dir).
    pub database: Option<String>,
    /// With `database`: keep the CA and the admin token in it, sealed with the secret in this file, so
    /// every replica given the file shares them.
    pub cluster_secret_file: Option<PathBuf>,
    /// With `database`: a `nats://` URL connecting the replicas, so commands for an agent reach the replica
    /// that holds its stream and followers see output stored by any replica.
    pub nats: Option<String>,
    /// With `nats`: the CA to verify nats-server by, and the replica's credentials (plain when empty).
    pub nats_options: crate::fleet::NatsOptions,
    /// REST API and dashboard.
    pub listen: SocketAddr,
    /// Serve the REST API over TLS.
    pub api_tls: Option<ApiTls>,
    /// The URL HTTP agents are told to use; by default derived from the listen address (see
    /// [`api::advertise_url`]).
    pub advertise_url: Option<String>,
    /// Agent gRPC (always TLS).
    pub agent_listen: SocketAddr,
    /// Extra DNS names or IPs for the server certificate (agents verify a fixed name, so this is optional).
    pub agent_sans: Vec<String>,
    pub liveness: LivenessPolicy,
    /// Metrics samples kept per node.
    pub metrics_history: usize,
    /// At most one metrics sample per node per this much of the clock.
    pub metrics_history_interval: Duration,
    pub open_registration: bool,
    /// Selection uses the labels nodes report after enrolling, not only those the operator controls.
    pub trust_reported_labels: bool,
    /// A run whose node has not been heard from for this long ends as Lost.
    pub lost_after: Duration,
    /// Finished tasks older than this are deleted with their output.
    pub task_retention: Duration,
    /// All task output together is kept under this many bytes (the oldest finished tasks' output goes first).
    pub max_task_output: u64,
    /// Also serve `/metrics` here, without a token (off by default).
    pub metrics_listen: Option<SocketAddr>,
    /// Export per-node CPU, memory, disk and GPU gauges in `/metrics` (a series set per node).
    pub metrics_per_node: bool,
}

/// An agent connection with nothing read from it for this long is pinged; one that does not answer within
/// `KEEPALIVE_TIMEOUT` is dropped, and its node shows as disconnected: a dead peer (a partition, a frozen
/// machine) is noticed within 25 s. Longer than the default heartbeat (10 s) so that a healthy agent's beats
/// keep its connection proven and it is never pinged: at 19,000 agents a ping racing every beat was a third
/// of the server's network reads at idle.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often stream heartbeats are written.
const HEARTBEAT_FLUSH: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database: None,
            cluster_secret_file: None,
            nats: None,
            nats_options: Default::default(),
            listen: ([127, 0, 0, 1], 8080).into(),
            api_tls: None,
            advertise_url: None,
            agent_listen: ([0, 0, 0, 0], 9090).into(),
            agent_sans: Vec::new(),
            liveness: LivenessPolicy::default(),
            metrics_history: 360,
            metrics_history_interval: Duration::from_secs(60),
            open_registration: false,
            trust_reported_labels: false,
            lost_after: Duration::from_secs(600),
            task_retention: Duration::from_secs(7 * 24 * 3600),
            max_task_output: 4 << 30,
            metrics_listen: None,
            metrics_per_node: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another drover server is running on the data dir {0} (it holds {LOCK_FILE} there): stop it first"
    )]
    InUse(PathBuf),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("--cluster-secret-file needs --database: the CA is shared through PostgreSQL")]
    SecretWithoutDatabase,
    #[error("--nats needs --database: replicas share their records through PostgreSQL")]
    NatsWithoutDatabase,
    #[error(transparent)]
    Nats(#[from] crate::fleet::NatsError),
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error(
        "cannot listen on {addr}: {source} (is another server running? choose another address with {flag})"
    )]
    Listen {
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    ApiTls(#[from] ApiTlsError),
    #[error("the {0} listener failed: {1}")]
    Serve(&'static str, String),
}

/// What a start created, so the caller can tell the user.
#[derive(Debug, Clone, Default)]
pub struct FirstStart {
    pub created_ca: bool,
    pub created_admin_token: bool,
}

pub struct RunningServer {
    pub fleet: Arc<Fleet>,
    pub api_addr: SocketAddr,
    /// Whether the REST API is served over TLS.
    pub api_tls: bool,
    pub agent_addr: SocketAddr,
    /// Where `/metrics` is served without a token, with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub admin_token: String,
    pub admin_token_path: PathBuf,
    pub ca_path: PathBuf,
    pub first_start: FirstStart,
    shutdown: watch::Sender<bool>,
    /// The data dir's lock, held until the server stops.
    data_dir_lock: std::fs::File,
    api_task: JoinHandle<Result<(), ServerError>>,
    agent_task: JoinHandle<Result<(), ServerError>>,
}

/// Locks the data dir for this process, or says that another server holds it. Keep the file open as long
/// as the lock is needed.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::InUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Connections the kernel holds for a listener until it accepts them (it caps this at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). The usual 128 overflows when a fleet reconnects at
/// once: the kernel then drops handshakes, and agents see connect timeouts, resets and broken pipes, each
/// costing them a backoff of up to 30 s.
pub const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, ServerError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server can bind while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| ServerError::Listen { addr, flag, source })
}

/// Writes stream heartbeats once a second (and once more at shutdown).
async fn flush_heartbeats(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(HEARTBEAT_FLUSH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = every.tick() => false,
            _ = shutdown.changed() => true,
        };
        if let Err(e) = fleet.nodes.flush_heartbeats().await {
            tracing::error!("cannot record heartbeats: {e}");
        }
        if stop {
            return;
        }
    }
}

/// How often a replica that does not lead tries to take the leader lock (and the leader checks it holds it).
const LEADER_RETRY: Duration = Duration::from_secs(2);

/// Takes the leader lock (or checks it still holds it) and says when that changes.
async fn try_lead(fleet: &Fleet) {
    let now = match fleet.store().try_lead().await {
        Ok(l) => l,
        Err(e) => {
            if fleet.is_leader() {
                tracing::warn!("lost the leader lock: {e}");
            }
            false
        }
    };
    if now != fleet.is_leader() {
        fleet.set_leader(now);
        if now {
            tracing::info!("leader: this replica runs the sweeps and retention now");
        } else {
            tracing::info!("not the leader any more: another replica runs the sweeps");
        }
    }
}

/// Keeps trying the leader lock, so leadership moves when the leader dies.
async fn lead(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEADER_RETRY) => {}
            _ = shutdown.changed() => return,
        }
        try_lead(&fleet).await;
    }
}

/// Housekeeping: runs whose node went silent end as Lost; channels nobody follows go; old tasks and output go;
/// freed memory goes back to the system.
async fn janitor(fleet: Arc<Fleet>, config: ServerConfig, mut shutdown: watch::Receiver<bool>) {
    let every = (config.lost_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut since_retention = RETENTION_EVERY;
    let mut since_release = Duration::ZERO;
    loop {
        if since_release >= memory::RELEASE_EVERY {
            since_release = Duration::ZERO;
            memory::release_free_memory().await;
        }
        // Channels are this replica's own; the store's records are swept by the leader alone.
        let leader = fleet.is_leader();
        if leader && since_retention >= RETENTION_EVERY {
            since_retention = Duration::ZERO;
            match fleet
                .tasks
                .apply_retention(config.task_retention, config.max_task_output)
                .await
            {
                Ok((0, 0)) => {}
                Ok((deleted, trimmed)) => {
                    tracing::info!(
                        deleted,
                        trimmed,
                        "task retention: deleted old tasks, trimmed output"
                    )
                }
                Err(e) => tracing::error!("task retention failed: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        since_retention += every;
        since_release += every;
        fleet.tasks.sweep_followers();
        if !fleet.is_leader() {
            continue;
        }
        match fleet.tasks.sweep_lost_runs(config.lost_after).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "runs whose node went silent ended as Lost"),
            Err(e) => tracing::error!("cannot look for lost runs: {e}"),
        }
    }
}

/// Opens SQLite, or PostgreSQL; with a cluster secret, also joins the cluster (its CA and admin
/// token are sealed in PostgreSQL), so it runs before the PKI and the token are loaded.
async fn open_store(
    config: &ServerConfig,
    dir: &Path,
    sans: &[String],
) -> Result<Arc<dyn Store>, ServerError> {
    Ok(match (&config.database, &config.cluster_secret_file) {
        (None, None) => Arc::new(SqliteStore::open(&dir.join(DB_FILE))?),
        (None, Some(_)) => return Err(ServerError::SecretWithoutDatabase),
        (Some(url), secret) => {
            let store = PgStore::connect(url).await?;
            tracing::info!(database = %crate::store::redact_url(url), "the store is in PostgreSQL");
            if let Some(path) = secret {
                let secret = crate::cluster::ClusterSecret::read(path)?;
                let made = crate::cluster::join(dir, &store, &secret, sans).await?;
                tracing::info!(
                    "{} the cluster's CA and admin token, sealed in PostgreSQL",
                    if made { "stored" } else { "loaded" }
                );
            }
            Arc::new(store)
        }
    })
}

/// The three listeners, bound and with their addresses (port 0 is resolved).
struct Listeners {
    api: TcpListener,
    agent: TcpListener,
    api_addr: SocketAddr,
    agent_addr: SocketAddr,
    metrics: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

fn bind_listeners(config: &ServerConfig) -> Result<Listeners, ServerError> {
    let api_listener = bind(config.listen, "--listen")?;
    let agent_listener = bind(config.agent_listen, "--agent-listen")?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            flag: "--listen",
            source,
        })?;
    let agent_addr = agent_listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.agent_listen,
            flag: "--agent-listen",
            source,
        })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind(addr, "--metrics-listen")?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    Ok(Listeners {
        api: api_listener,
        agent: agent_listener,
        api_addr,
        agent_addr,
        metrics: metrics_listener,
        metrics_addr,
    })
}

/// The metrics listener, the leader election and the sweeps: all stop when `shutdown` turns true.
async fn start_background_tasks(
    fleet: &Arc<Fleet>,
    config: &ServerConfig,
    metrics_listener: Option<TcpListener>,
    shutdown: &watch::Receiver<bool>,
) {
    if let Some(listener) = metrics_listener {
        let (fleet, stop) = (fleet.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = api::metrics::serve_open(listener, fleet, stop).await {
                tracing::error!("the metrics listener failed: {e}");
            }
        });
    }
    // Whether this replica leads is known before the first sweep.
    fleet.set_leader(false);
    try_lead(fleet).await;
    tokio::spawn(lead(fleet.clone(), shutdown.clone()));
    tokio::spawn(janitor(fleet.clone(), config.clone(), shutdown.clone()));
    tokio::spawn(flush_heartbeats(fleet.clone(), shutdown.clone()));
    tokio::spawn(drive_rollouts(fleet.clone(), shutdown.clone()));
}

/// How often the leader moves rollouts on: the finest a bake or a wave's judgement can be.
const ROLLOUT_TICK: Duration = Duration::from_secs(1);

/// The leader drives every rollout under way, once a tick (`Rollouts::drive_rollouts`); another replica
/// takes over from the store if it becomes the leader.
async fn drive_rollouts(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(ROLLOUT_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        if fleet.is_leader()
            && let Err(e) = fleet.rollouts.drive_rollouts().await
        {
            tracing::error!("cannot drive rollouts: {e}");
        }
    }
}

/// Serves the REST API (and the UI) on `listener` until `shutdown` turns true.
fn spawn_api(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<rustls::ServerConfig>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<Result<(), ServerError>> {
    tokio::spawn(async move {
        api::serve(listener, router, tls, shutdown)
            .await
            .map_err(|e| ServerError::Serve("REST API", e.to_string()))
    })
}

/// Serves the agents' gRPC link over mTLS on `agent_listener` until `shutdown` turns true.
fn spawn_agent_link(
    agent_listener: TcpListener,
    pki: &Pki,
    metrics: Arc<ServerMetrics>,
    fleet: &Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<(), ServerError>>, ServerError> {
    let incoming = tls::incoming(agent_listener, tls::server_config(pki)?, metrics.clone());
    let gateway = Gateway::new(fleet.clone(), shutdown.clone());
    let mut agent_shutdown = shutdown;
    let agent_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .initial_stream_window_size(Some(drover_types::STREAM_WINDOW))
            .initial_connection_window_size(Some(drover_types::STREAM_WINDOW * 2))
            .add_service(UnprovenLimits::new(
                drover_proto::AgentLinkServer::new(gateway)
                    .max_decoding_message_size(drover_types::limits::MAX_MESSAGE)
                    .max_encoding_message_size(drover_types::limits::MAX_MESSAGE),
                metrics,
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = agent_shutdown.changed().await;
            })
            .await
            .map_err(|e| ServerError::Serve("agent gRPC", e.to_string()))
    });
    Ok(agent_task)
}

/// The names in the agent listener's certificate: loopback, then `--agent-san`s.
fn agent_cert_sans(config: &ServerConfig) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    sans.extend(config.agent_sans.iter().cloned());
    sans
}

/// Raises the open-file limit and logs it: it caps the agents and clients connected at once.
fn raise_open_files() {
    match crate::rlimit::raise_open_files() {
        Ok(files) => tracing::info!(
            open_files = files,
            "open-file limit: one a connection, so about this many agents and clients at once"
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// The fleet over the store (timed into `metrics`), linked to the other replicas when NATS is set.
async fn new_fleet(
    config: &ServerConfig,
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    metrics: &Arc<ServerMetrics>,
) -> Result<Arc<Fleet>, ServerError> {
    let store = TimedStore::new(store, metrics.clone());
    let fleet = Fleet::new(
        Arc::new(store),
        pki,
        FleetConfig {
            liveness: config.liveness,
            metrics_history: MetricsHistory {
                keep: config.metrics_history.max(1),
                every: config.metrics_history_interval,
            },
            open_registration: config.open_registration,
            trust_reported_labels: config.trust_reported_labels,
            metrics: metrics.clone(),
        },
    );
    if let Some(url) = &config.nats {
        let nats = crate::fleet::Nats::connect(url, "drover-server", &config.nats_options).await?;
        tracing::info!(nats = %crate::store::redact_url(url), "connected to the other replicas through NATS");
        fleet.set_nats(nats);
    }
    Ok(fleet)
}

impl RunningServer {
    /// Prepares the data dir and starts both listeners. Returns once they accept connections.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let dir = &config.data_dir;
        create_private_dir(dir).map_err(|source| ServerError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let data_dir_lock = lock_data_dir(dir)?;
        let sans = agent_cert_sans(&config);
        if config.open_registration {
            tracing::warn!(
                "open registration is on (labs only): anyone who reaches the REST API can register an HTTP node without a token, and take over an existing HTTP node's name"
            );
        }
        if config.nats.is_some() && config.database.is_none() {
            return Err(ServerError::NatsWithoutDatabase);
        }
        // The store first: with a cluster secret, the CA and the admin token come from it.
        let store = open_store(&config, dir, &sans).await?;
        raise_open_files();
        let (pki, created_ca) = Pki::load_or_create(dir, &sans)?;
        let (admin_token, created_admin_token) =
            crate::admin_token::load_or_create(dir).map_err(|e| ServerError::DataDir {
                path: e.path,
                source: e.source,
            })?;
        let metrics = Arc::new(ServerMetrics::new(config.metrics_per_node));
        let pki = Arc::new(pki);
        let fleet = new_fleet(&config, store, pki.clone(), &metrics).await?;

        // Before listening: a bad --api-cert is a start error, not a listener that fails later.
        let api_tls = config
            .api_tls
            .as_ref()
            .map(|t| api::tls_config(&pki, t))
            .transpose()?;
        let api_tls_on = api_tls.is_some();

        let Listeners {
            api: api_listener,
            agent: agent_listener,
            api_addr,
            agent_addr,
            metrics: metrics_listener,
            metrics_addr,
        } = bind_listeners(&config)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        start_background_tasks(&fleet, &config, metrics_listener, &shutdown_rx).await;

        let advertise_url = config
            .advertise_url
            .clone()
            .unwrap_or_else(|| api::advertise_url(api_addr, api_tls_on));
        let router = api::router(
            HttpState::new(fleet.clone(), &admin_token)
                .with_tls(api_tls_on)
                .with_advertise_url(&advertise_url),
        );
        let api_task = spawn_api(api_listener, router, api_tls, shutdown_rx.clone());

        let agent_task = spawn_agent_link(agent_listener, &pki, metrics, &fleet, shutdown_rx)?;

        Ok(Self {
            fleet,
            api_addr,
            api_tls: api_tls_on,
            agent_addr,
            metrics_addr,
            admin_token,
            admin_token_path: dir.join(ADMIN_TOKEN_FILE),
            ca_path: dir.join(CA_CERT_FILE),
            first_start: FirstStart {
                created_ca,
                created_admin_token,
            },
            shutdown,
            data_dir_lock,
            api_task,
            agent_task,
        })
    }

    /// Runs until `signal` completes or a listener fails, then stops gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let RunningServer {
            shutdown,
            mut api_task,
            mut agent_task,
            data_dir_lock: _held_until_stopped,
            ..
        } = self;
        let failed = tokio::select! {
            _ = signal => None,
            r = &mut api_task => Some(r),
            r = &mut agent_task => Some(r),
        };
        let _ = shutdown.send(true);
        if let Some(result) = failed {
            return result.map_err(|e| ServerError::Serve("server", e.to_string()))?;
        }
        let grace = std::time::Duration::from_secs(10);
        for task in [api_task, agent_task] {
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(r)) => r?,
                Ok(Err(e)) => return Err(ServerError::Serve("server", e.to_string())),
                Err(_) => tracing::warn!("a listener did not stop within {grace:?}"),
            }
        }
        Ok(())
    }
}
