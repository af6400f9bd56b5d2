//! The agent's one error type.

use std::path::PathBuf;

/// What can go wrong in the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// vgpud's control socket could not be reached or broke off.
    #[error("vgpud at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// vgpud refused an operation (its errno name and message).
    #[error("vgpud refused {op}: {errno}: {message}")]
    Refused {
        op: &'static str,
        errno: String,
        message: String,
    },
    /// vgpud's reply was not what the control socket documents.
    #[error("vgpud's reply to {op} is malformed: {source}")]
    Reply {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The node layout file is malformed.
    #[error("{path}: {source}")]
    LayoutSyntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The node layout file is well formed but names something impossible.
    #[error("{path}: {what}")]
    Layout { path: PathBuf, what: String },
    /// A JSON document (claim, checkpoint, VMI) is malformed.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A domain XML could not be read or rewritten.
    #[error("domain XML: {0}")]
    Domain(String),
    /// A gRPC server or client could not start.
    #[error("gRPC {what}: {source}")]
    Transport {
        what: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A gRPC call failed.
    #[error("{what}: {status}")]
    Rpc {
        what: String,
        #[source]
        status: tonic::Status,
    },
    /// A claim cannot be prepared (reported per claim to the kubelet).
    #[error("{0}")]
    Claim(String),
    /// The command line asks for nothing, or for something impossible.
    #[error("{0}")]
    Usage(String),
    /// The async runtime or a signal handler could not be set up.
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `kubectl` failed.
    #[error("kubectl {args}: {message}")]
    Kubectl { args: String, message: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn file(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::File {
            path: path.to_path_buf(),
            source,
        }
    }

    /// vgpud refused with this errno name.
    pub fn is_refused(&self, name: &str) -> bool {
        matches!(self, Error::Refused { errno, .. } if errno == name)
    }
}
