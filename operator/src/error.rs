//! The crate's error type. Each variant has a stable metric label.

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialization error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ChatCluster has no namespace")]
    NoNamespace,
    #[error("leader election: {0}")]
    Lease(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable label for the `tern_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::Json(_) => "json",
            Error::NoNamespace => "no_namespace",
            Error::Lease(_) => "lease",
        }
    }
}
