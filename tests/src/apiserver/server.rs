//! The accept loop ([`serve`]) and [`ApiServer`], a server running on a
//! background task with its state, address and kubeconfig at hand.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::{Error, ServerConfig, ServerState};

/// Serves the Kubernetes API for `state` on `listener` until `shutdown`
/// completes; then every open connection (and watch) is dropped.
pub async fn serve(listener: TcpListener, state: ServerState, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if state.shared.is_available() => {
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                Ok(_) => {} // simulated outage: close at once
                Err(e) => {
                    tracing::warn!("test apiserver accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    state.drop_watches();
    connections.abort_all();
}

async fn serve_connection(stream: TcpStream, state: ServerState) {
    let shared = state.shared.clone();
    let service = service_fn(move |req| super::http::handle(shared.clone(), req));
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("test apiserver connection ended: {e}");
    }
}

/// A kubeconfig (YAML) with one cluster, user and current context pointing
/// at `http://{addr}` without credentials, default namespace `default`.
pub fn kubeconfig_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: svcplane-test
  cluster:
    server: http://{addr}
users:
- name: svcplane-test
  user: {{}}
contexts:
- name: svcplane-test
  context:
    cluster: svcplane-test
    user: svcplane-test
    namespace: default
current-context: svcplane-test
preferences: {{}}
"
    )
}

/// A kube client built from [`kubeconfig_yaml`] the way a binary given that
/// kubeconfig would build one (but ignoring `HTTPS_PROXY`).
pub async fn client(addr: SocketAddr) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::from_yaml(&kubeconfig_yaml(addr))?;
    let options = KubeConfigOptions::default();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    config.proxy_url = None;
    Ok(kube::Client::try_from(config)?)
}

/// A test API server on 127.0.0.1 running on a background task; stopped when
/// dropped. Dereferences to its [`ServerState`] for the test controls.
pub struct ApiServer {
    state: ServerState,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Starts a server with the default [`ServerConfig`] on 127.0.0.1:0.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(ServerConfig::default()).await
    }

    /// Starts a server with `config` on 127.0.0.1:0.
    pub async fn start_with(config: ServerConfig) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::from_listener(listener, config)
    }

    /// Starts a server on an already bound listener.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Result<Self, Error> {
        let addr = listener.local_addr()?;
        let state = ServerState::new(config);
        let (stop, stopped) = oneshot::channel();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(listener, state.clone(), shutdown));
        Ok(Self {
            state,
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The state and test controls.
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// A kubeconfig for this server; see [`kubeconfig_yaml`].
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(self.addr)
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `dir/kubeconfig`
    /// and returns the path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml())?;
        Ok(path)
    }

    /// A kube client for this server; see [`client`].
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client(self.addr).await
    }

    /// Stops accepting, drops every connection and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Deref for ApiServer {
    type Target = ServerState;

    fn deref(&self) -> &ServerState {
        &self.state
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
