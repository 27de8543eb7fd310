//! `PUT /_matrix/federation/v1/send/{txnId}`: transactions from other servers (spec:
//! "Transactions"). The router verified the X-Matrix signature; the work is in
//! `service::federation::receive`.

use std::sync::Arc;

use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::{federation::receive, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(send);
}

async fn send(
    services: Arc<Services>,
    ctx: Ctx,
    body: send_transaction_message::v1::Request,
) -> Result<send_transaction_message::v1::Response> {
    let origin = ctx.origin()?;
    let edus: Vec<_> = body.edus.iter().map(|e| e.json().to_owned()).collect();
    let results = receive::receive(
        &services,
        receive::Transaction {
            origin,
            txn_id: body.transaction_id.as_str(),
            body_origin: &body.origin,
            pdus: &body.pdus,
            edus: &edus,
        },
    )
    .await?;
    Ok(send_transaction_message::v1::Response::new(results))
}
