//! Starting and stopping a whole server: store, services, routing table, listeners.

use std::{net::SocketAddr, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};

use crate::{api, config::Config, http, service::Services};

/// A running server. Dropping it does not stop it; call [`Server::stop`].
pub struct Server {
    /// The bound address of each listener (useful with port 0).
    pub addrs: Vec<SocketAddr>,
    pub services: Arc<Services>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] crate::service::OpenError),
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
        tokio::task::spawn_blocking(move || Services::open(config))
            .await
            .map_err(|e| StartError::Open(crate::store::StoreError::Io(e.to_string()).into()))??
    };
    let router = Arc::new(api::router());
    let (shutdown, _) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for listener in listeners {
        let socket = tokio::net::TcpListener::bind(listener.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: listener.bind,
                source,
            })?;
        let addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: listener.bind,
            source,
        })?;
        let mut stop = shutdown.subscribe();
        let signal = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tasks.push(tokio::spawn(http::serve(
            services.clone(),
            router.clone(),
            socket,
            signal,
        )));
        log::info!("listening on http://{addr} as {}", config.server_name);
        addrs.push(addr);
    }
    Ok(Server {
        addrs,
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

    /// Stops accepting, lets in-flight requests finish, and closes the store.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
