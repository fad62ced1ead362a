//! Starting and stopping a meta server.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::MetaCore;
use crate::failover::Promotion;
use crate::http::{router, HttpState};
use crate::model::BrokerSpec;
use crate::store::Store;
use crate::{standalone, tcp, MetaConfig, MetaError};

/// A running meta server. Dropping it does not stop it; call [`MetaServerHandle::shutdown`].
#[derive(Debug)]
pub struct MetaServerHandle {
    http_addr: SocketAddr,
    tcp_addr: SocketAddr,
    advertised: String,
    core: Arc<MetaCore>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl MetaServerHandle {
    /// The bound HTTP address (discovery, admin API).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound TCP address (QMQ meta protocol).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The `host:port` clients are told to use (`GET /meta/address`).
    pub fn advertised_tcp_address(&self) -> &str {
        &self.advertised
    }

    /// The server's database.
    pub fn store(&self) -> &Store {
        self.core.store()
    }

    /// Registers the local broker of a standalone deployment (see [`standalone`]).
    pub async fn register_local_broker(&self, broker: &BrokerSpec) -> Result<(), MetaError> {
        standalone::register_local_broker(self.core.store(), broker).await
    }

    /// Runs one round of the failover checker now (it also runs every `failover_check_ms`);
    /// returns the promotions this server made.
    pub async fn check_failover(&self) -> Result<Vec<Promotion>, MetaError> {
        self.core.check_failover().await
    }

    /// Stops accepting, closes connections, waits for the server's tasks, closes the database.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.core.store().close().await;
    }
}

/// The IP other machines can reach this one at (no packet is sent); loopback if unknown.
fn outbound_ip() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Starts a meta server: opens (and migrates) the database, loads the cache, binds the TCP
/// and HTTP listeners, and starts the cache refresher, the heartbeat sweeper and the failover checker.
pub async fn serve(config: MetaConfig) -> Result<MetaServerHandle, MetaError> {
    config.validate()?;
    let store = match &config.database_url {
        Some(url) => Store::connect(url).await?,
        None => Store::open_sqlite_dir(&config.data_dir).await?,
    };
    let tcp = TcpListener::bind(config.tcp_addr).await?;
    let http = TcpListener::bind(config.http_addr).await?;
    let tcp_addr = tcp.local_addr()?;
    let http_addr = http.local_addr()?;
    let host = match &config.advertised_host {
        Some(h) => h.clone(),
        None if tcp_addr.ip().is_unspecified() => outbound_ip().to_string(),
        None => tcp_addr.ip().to_string(),
    };
    let advertised = format!("{host}:{}", tcp_addr.port());
    let core = Arc::new(MetaCore::new(store, config).await?);
    if let Some(m) = &core.config.metrics {
        m.attach(Arc::downgrade(&core));
    }
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    tracker.spawn(tcp::accept_loop(
        tcp,
        core.clone(),
        stop.clone(),
        tracker.clone(),
    ));

    let app = router(HttpState {
        core: core.clone(),
        tcp_advertised: advertised.clone(),
    });
    let http_stop = stop.clone();
    tracker.spawn(async move {
        let server = axum::serve(http, app).with_graceful_shutdown(http_stop.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "meta http server failed");
        }
    });

    tracker.spawn(periodic(stop.clone(), core.refresh_interval(), {
        let core = core.clone();
        move || {
            let core = core.clone();
            async move {
                if let Err(e) = core.refresh().await {
                    core.note_error(&e);
                    tracing::warn!(error = %e, "cache refresh failed; serving the cached view");
                }
            }
        }
    }));
    tracker.spawn(periodic(stop.clone(), core.sweep_interval(), {
        let core = core.clone();
        move || {
            let core = core.clone();
            async move {
                if let Err(e) = core.expire_heartbeats().await {
                    core.note_error(&e);
                    tracing::warn!(error = %e, "heartbeat sweep failed");
                }
            }
        }
    }));

    tracker.spawn(periodic(stop.clone(), core.failover_check_interval(), {
        let core = core.clone();
        move || {
            let core = core.clone();
            async move {
                if let Err(e) = core.check_failover().await {
                    core.note_error(&e);
                    tracing::warn!(error = %e, "failover check failed");
                }
            }
        }
    }));

    tracing::info!(%http_addr, %tcp_addr, %advertised, "meta server started");
    if core.config.cluster_secret.is_none() && core.config.trusted_broker_addrs.is_empty() {
        tracing::warn!(
            "no cluster secret and no trusted broker address: anyone reaching the meta TCP \
             port can register broker groups or take them offline"
        );
    }
    Ok(MetaServerHandle {
        http_addr,
        tcp_addr,
        advertised,
        core,
        stop,
        tracker,
    })
}

/// Runs `job` every `every` until `stop` is cancelled.
async fn periodic<F, Fut>(stop: CancellationToken, every: std::time::Duration, job: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => job().await,
        }
    }
}
