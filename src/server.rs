//! Starting and stopping a whole server: store, services, routing table, listeners.

use std::{net::SocketAddr, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};

use crate::{api, config::Config, http, service::Services};

/// A running server. Dropping it does not stop it; call [`Server::stop`].
pub struct Server {
    /// The bound address of each plain-HTTP listener (useful with port 0).
    pub addrs: Vec<SocketAddr>,
    /// The bound address of each HTTPS listener (`tls.listeners`).
    pub tls_addrs: Vec<SocketAddr>,
    pub services: Arc<Services>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] crate::service::OpenError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the data directory and starts serving on every configured listener.
pub async fn start(config: Config) -> Result<Server, StartError> {
    let listeners = config.listeners.clone();
    let services = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let services = Services::open(config)?;
            // Leftovers of a crash in the media repository; only the server sweeps them
            // (admin commands that open the data directory change nothing there).
            services.media.recover();
            Ok::<_, crate::service::OpenError>(services)
        })
        .await
        .map_err(|e| StartError::Open(crate::store::StoreError::Io(e.to_string()).into()))??
    };
    services.finish_pending_deactivations().await;
    let router = Arc::new(api::router());
    let (shutdown, _) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tls_addrs = Vec::new();
    let mut tasks = Vec::new();
    let tls = http::tls::setup(&config, shutdown.subscribe())
        .await
        .map_err(StartError::Tls)?;
    let binds = listeners
        .iter()
        .map(|l| (l.bind, None))
        .chain(config.tls.listeners.iter().map(|b| {
            (
                *b,
                Some(tls.clone().expect("validated: tls listeners need tls")),
            )
        }));
    let limits = http::listener::ConnLimits::new(
        config.limits.read_timeout(),
        config.limits.max_connections as usize,
    );
    for (bind, tls) in binds {
        let socket = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| StartError::Bind { addr: bind, source })?;
        let addr = socket
            .local_addr()
            .map_err(|source| StartError::Bind { addr: bind, source })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if tls.is_some() {
            tls_addrs.push(addr);
        } else {
            addrs.push(addr);
        }
        let mut stop = shutdown.subscribe();
        let signal = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tasks.push(tokio::spawn(http::serve(
            services.clone(),
            router.clone(),
            socket,
            tls,
            limits.clone(),
            signal,
        )));
        log::info!("listening on {scheme}://{addr} as {}", config.server_name);
    }
    tasks.push(tokio::spawn(
        services
            .delivery
            .clone()
            .run(services.notifications.subscribe(), shutdown.subscribe()),
    ));
    tasks.push(tokio::spawn(
        services.fed_sender.clone().run(shutdown.subscribe()),
    ));
    tasks.push(tokio::spawn(
        services
            .partial_sync
            .clone()
            .run(services.clone(), shutdown.subscribe()),
    ));
    tasks.push(tokio::spawn({
        let (services, shutdown) = (services.clone(), shutdown.subscribe());
        async move { services.search.run_indexer(shutdown).await }
    }));
    tasks.push(tokio::spawn(crate::service::push::retention::run(
        services.store.clone(),
        shutdown.subscribe(),
    )));
    tasks.push(tokio::spawn(crate::service::expiring_tokens::run_sweeps(
        services.openid_tokens.clone(),
        services.login_tokens.clone(),
        shutdown.subscribe(),
    )));
    tasks.push(tokio::spawn(crate::memory::release_freed_memory(
        shutdown.subscribe(),
    )));
    tasks.push(crate::admin::start(
        &config,
        services.store.clone(),
        shutdown.subscribe(),
    ));
    Ok(Server {
        addrs,
        tls_addrs,
        services,
        shutdown,
        tasks,
    })
}

impl Server {
    /// `http://addr` of the first listener.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addrs[0])
    }

    /// Stops accepting, wakes long-polls, lets in-flight requests finish (for at most
    /// [`http::listener::DRAIN_DEADLINE`]), and closes the store.
    pub async fn stop(self) {
        self.services.notifier.close();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
