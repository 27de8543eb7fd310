//! TEMPORARY SHIM (helper Y): the interface of the lead's client, reverted before merging.
use ruma::{
    api::{federation::authentication::ServerSignatures, OutgoingRequest},
    OwnedServerName, ServerName,
};

#[derive(Debug, thiserror::Error)]
pub enum FedError {
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
    #[error("{status} {errcode}: {error}")]
    Remote {
        status: http::StatusCode,
        errcode: String,
        error: String,
    },
    #[error("bad response: {0}")]
    Response(String),
    #[error("request to self")]
    ToSelf,
}

pub struct FederationClient {
    server_name: OwnedServerName,
}

impl FederationClient {
    pub fn new(server_name: OwnedServerName) -> Self {
        Self { server_name }
    }
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        _request: R,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures> + Send,
    {
        if destination == self.server_name {
            return Err(FedError::ToSelf);
        }
        Err(FedError::Outbound(crate::outbound::OutboundError::Connect))
    }
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }
}
