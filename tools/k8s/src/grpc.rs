//! gRPC over Unix sockets, both ways, as the kubelet speaks it.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// A client channel to the gRPC server on `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, Error> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is not used: every connection goes to the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|source| Error::Transport {
            what: format!("connect {}", socket.display()),
            source,
        })
}

/// Listen on `socket` (a stale file there is removed first): the
/// connections for `tonic`'s `serve_with_incoming`.
pub fn listen(socket: &Path) -> Result<UnixListenerStream, Error> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::file(socket, e)),
        _ => {}
    }
    let l = UnixListener::bind(socket).map_err(|e| Error::file(socket, e))?;
    Ok(UnixListenerStream::new(l))
}

/// How long servers get to finish their calls once asked to stop.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Run `server` (built with a shutdown future on `shutdown`); once
/// `shutdown` turns true it gets [`GRACE`] to close its connections (a peer
/// that never answers HTTP/2's closing handshake cannot hold the agent).
pub async fn until_stopped<F, E>(
    server: F,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        _ = async {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        } => {}
    }
    match tokio::time::timeout(GRACE, server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("a client kept its connection past the grace period: closed");
            Ok(())
        }
    }
}
