//! Third-party identifiers (e-mail addresses) of accounts: `requestToken`, `/account/3pid*`,
//! and the validation link and `submit_url` that the mails point at.
//!
//! Hearth sends the validation mails itself and has no identity-server client: `id_server`
//! and `id_access_token` are ignored, binds are refused and unbinds answer `no-support`.

use std::sync::Arc;

use http::{Method, StatusCode};
use ruma::api::client::account::{
    add_3pid, bind_3pid, delete_3pid, get_3pids, request_3pid_management_token_via_email,
    request_3pid_management_token_via_msisdn, request_password_change_token_via_email,
    request_password_change_token_via_msisdn, request_registration_token_via_email,
    request_registration_token_via_msisdn, unbind_3pid, ThirdPartyIdRemovalStatus,
};
use ruma::UInt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    config::RegistrationMode,
    error::{Error, Result},
    http::{json_value, query, Auth, Ctx, Incoming, Response, Router},
    service::{
        threepids::{
            self, is_valid_secret, medium_not_supported, require_mailer, Purpose, TokenRequest,
            EMAIL, SUBMIT_PATH, VALIDATE_PATH,
        },
        Services,
    },
    store::{Batch, CommitError},
};

pub fn routes(router: &mut Router) {
    router.raw_ruma::<get_3pids::v3::Request, _, _>(list);
    for path in [
        "/_matrix/client/v3/account/3pid",
        "/_matrix/client/r0/account/3pid",
    ] {
        router.raw(Method::POST, path, Auth::Required, add_deprecated);
    }
    router.ruma_checked(check_client_secret, request_add_token);
    router.ruma_checked(check_client_secret, request_register_token);
    router.ruma_checked(check_client_secret, request_password_token);
    router.ruma(msisdn_add);
    router.ruma(msisdn_register);
    router.ruma(msisdn_password);
    router.ruma_checked(check_client_secret, add);
    router.ruma(delete);
    router.ruma(bind);
    router.ruma(unbind);
    router.raw(Method::GET, VALIDATE_PATH, Auth::None, validate_page);
    router.raw(Method::POST, SUBMIT_PATH, Auth::None, submit_token);
}

/// A malformed `client_secret` is `M_INVALID_PARAM` (ruma's parser would call it bad JSON).
fn check_client_secret(body: &[u8]) -> Result<()> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    match body.get("client_secret") {
        Some(Value::String(s)) if !is_valid_secret(s) => Err(Error::invalid_param(
            "client_secret must be 1-255 characters of 0-9 a-z A-Z . = _ -",
        )),
        _ => Ok(()),
    }
}

async fn list(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let threepids: Vec<Value> = services
        .threepids
        .list(&me.user_id)?
        .into_iter()
        .map(|(medium, address, times)| {
            json!({
                "medium": medium,
                "address": address,
                "added_at": times.added_ms,
                "validated_at": times.validated_ms,
            })
        })
        .collect();
    Ok(json_value(
        StatusCode::OK,
        json!({ "threepids": threepids }),
    ))
}

/// The three e-mail `requestToken` endpoints, once parsed.
async fn request_token(
    services: &Services,
    purpose: Purpose,
    client_secret: &str,
    email: &str,
    send_attempt: UInt,
    next_link: Option<&str>,
) -> Result<(String, String)> {
    let mailer = require_mailer(services.mailer.as_ref())?;
    let base = services.email_link_base();
    let request = TokenRequest {
        purpose,
        client_secret,
        email,
        send_attempt: send_attempt.into(),
        next_link,
    };
    let sid = services
        .threepids
        .request_and_send(mailer, &base, request)
        .await?;
    Ok((sid, format!("{base}{SUBMIT_PATH}")))
}

fn session_id(sid: String) -> Result<ruma::OwnedSessionId> {
    sid.try_into()
        .map_err(|_| Error::unknown("Generated an invalid session id"))
}

async fn request_add_token(
    services: Arc<Services>,
    _: Ctx,
    body: request_3pid_management_token_via_email::v3::Request,
) -> Result<request_3pid_management_token_via_email::v3::Response> {
    let (sid, submit_url) = request_token(
        &services,
        Purpose::Add,
        body.client_secret.as_str(),
        &body.email,
        body.send_attempt,
        body.next_link.as_deref(),
    )
    .await?;
    let mut response = request_3pid_management_token_via_email::v3::Response::new(session_id(sid)?);
    response.submit_url = Some(submit_url);
    Ok(response)
}

async fn request_register_token(
    services: Arc<Services>,
    _: Ctx,
    body: request_registration_token_via_email::v3::Request,
) -> Result<request_registration_token_via_email::v3::Response> {
    if services.config.registration.mode == RegistrationMode::Closed {
        return Err(Error::forbidden("Registration is disabled on this server"));
    }
    let (sid, submit_url) = request_token(
        &services,
        Purpose::Register,
        body.client_secret.as_str(),
        &body.email,
        body.send_attempt,
        body.next_link.as_deref(),
    )
    .await?;
    let mut response = request_registration_token_via_email::v3::Response::new(session_id(sid)?);
    response.submit_url = Some(submit_url);
    Ok(response)
}

async fn request_password_token(
    services: Arc<Services>,
    _: Ctx,
    body: request_password_change_token_via_email::v3::Request,
) -> Result<request_password_change_token_via_email::v3::Response> {
    let (sid, submit_url) = request_token(
        &services,
        Purpose::Password,
        body.client_secret.as_str(),
        &body.email,
        body.send_attempt,
        body.next_link.as_deref(),
    )
    .await?;
    let mut response = request_password_change_token_via_email::v3::Response::new(session_id(sid)?);
    response.submit_url = Some(submit_url);
    Ok(response)
}

fn no_msisdn() -> Error {
    medium_not_supported("phone numbers (msisdn)")
}

async fn msisdn_add(
    _: Arc<Services>,
    _: Ctx,
    _: request_3pid_management_token_via_msisdn::v3::Request,
) -> Result<request_3pid_management_token_via_msisdn::v3::Response> {
    Err(no_msisdn())
}

async fn msisdn_register(
    _: Arc<Services>,
    _: Ctx,
    _: request_registration_token_via_msisdn::v3::Request,
) -> Result<request_registration_token_via_msisdn::v3::Response> {
    Err(no_msisdn())
}

async fn msisdn_password(
    _: Arc<Services>,
    _: Ctx,
    _: request_password_change_token_via_msisdn::v3::Request,
) -> Result<request_password_change_token_via_msisdn::v3::Response> {
    Err(no_msisdn())
}

/// `POST /account/3pid/add`: spends a validated session, after the user's password.
async fn add(
    services: Arc<Services>,
    ctx: Ctx,
    body: add_3pid::v3::Request,
) -> Result<add_3pid::v3::Response> {
    let me = ctx.authed()?;
    require_mailer(services.mailer.as_ref())?;
    let (sid, client_secret) = (body.sid.as_str(), body.client_secret.as_str());
    // Checked before the password prompt, so nobody authenticates only to be refused.
    services
        .threepids
        .validated(sid, client_secret, Some(Purpose::Add))?;
    services
        .reauthenticate(
            "add_3pid",
            &me.user_id,
            ctx.ip,
            &json!({ "sid": sid, "client_secret": client_secret }),
            body.auth.as_ref(),
        )
        .await?;
    let session = services
        .threepids
        .validated(sid, client_secret, Some(Purpose::Add))?;
    let in_use = || {
        Error::new(
            StatusCode::BAD_REQUEST,
            "M_THREEPID_IN_USE",
            "This e-mail address is already in use",
        )
    };
    if services
        .threepids
        .owner(&session.medium, &session.address)?
        .is_some()
    {
        return Err(in_use());
    }
    let mut batch = Batch::new();
    services.threepids.stage_spend(&mut batch, sid, &session)?;
    services
        .threepids
        .stage_add(&mut batch, &me.user_id, &session);
    match services.store.commit(batch).await {
        Ok(()) => Ok(add_3pid::v3::Response::new()),
        Err(CommitError::Conflict) => {
            match services
                .threepids
                .owner(&session.medium, &session.address)?
            {
                Some(_) => Err(in_use()),
                None => Err(threepids::spent_meanwhile()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_3pid::v3::Request,
) -> Result<delete_3pid::v3::Response> {
    let me = ctx.authed()?;
    let address = match body.medium.as_str() {
        EMAIL => body.address.trim().to_lowercase(),
        _ => body.address.clone(),
    };
    for _ in 0..8 {
        let mut batch = Batch::new();
        let found = services.threepids.stage_remove(
            &mut batch,
            &me.user_id,
            body.medium.as_str(),
            &address,
        )?;
        if !found {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                "M_THREEPID_NOT_FOUND",
                "This account does not have that third-party identifier",
            ));
        }
        match services.store.commit(batch).await {
            Err(CommitError::Conflict) => continue,
            other => other?,
        }
        // Never bound to an identity server by this server: nothing to unbind there.
        return Ok(delete_3pid::v3::Response::new(
            ThirdPartyIdRemovalStatus::NoSupport,
        ));
    }
    Err(CommitError::Conflict.into())
}

fn no_identity_server() -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        "M_SERVER_NOT_TRUSTED",
        "This homeserver does not talk to identity servers: it cannot bind third-party \
         identifiers; add them with /account/3pid/add",
    )
}

async fn bind(
    _: Arc<Services>,
    ctx: Ctx,
    _: bind_3pid::v3::Request,
) -> Result<bind_3pid::v3::Response> {
    ctx.authed()?;
    Err(no_identity_server())
}

/// The deprecated `POST /account/3pid`, which the spec makes equivalent to `/3pid/bind`.
async fn add_deprecated(_: Arc<Services>, incoming: Incoming) -> Result<Response> {
    incoming.ctx.authed()?;
    #[derive(Deserialize)]
    struct Body {
        #[allow(dead_code)]
        three_pid_creds: Value,
    }
    serde_json::from_slice::<Body>(incoming.request.body())
        .map_err(|e| Error::bad_json(format!("Malformed request body: {e}")))?;
    Err(no_identity_server())
}

/// Removes nothing: this server never binds to identity servers, and the address stays on
/// the account (that is `/3pid/delete`).
async fn unbind(
    _: Arc<Services>,
    ctx: Ctx,
    _: unbind_3pid::v3::Request,
) -> Result<unbind_3pid::v3::Response> {
    ctx.authed()?;
    Ok(unbind_3pid::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    ))
}

fn html(status: StatusCode, title: &str, message: &str) -> Response {
    // Only fixed text goes into the page: nothing from the request is echoed.
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">\
         <h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body.into_bytes())
        .expect("static headers")
}

/// `GET /_hearth/email/validate?sid=…&client_secret=…&token=…`: the link in the mail.
/// Validates the session and shows a confirmation, or redirects to the session's
/// `next_link`.
async fn validate_page(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let q = incoming.request.uri().query().unwrap_or_default();
    let param = |name| query::value(q, name).unwrap_or_default();
    let result = services
        .threepids
        .submit_token(&param("sid"), &param("client_secret"), &param("token"))
        .await;
    Ok(match result {
        Ok(Some(next_link)) => http::Response::builder()
            .status(StatusCode::FOUND)
            .header(http::header::LOCATION, next_link)
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(Vec::new())
            .map_err(|_| Error::unknown("Invalid next_link"))?,
        Ok(None) => html(
            StatusCode::OK,
            "E-mail address confirmed",
            "Your e-mail address is confirmed. You can close this page and return to your app.",
        ),
        Err(e) if e.status.is_server_error() => return Err(e),
        Err(e) => {
            let message = match e.errcode {
                "M_SESSION_EXPIRED" => "This link has expired. Ask your app to send a new mail.",
                _ => {
                    "This link is not valid (it may be incomplete, or already replaced by a \
                      newer mail). Ask your app to send a new mail."
                }
            };
            html(StatusCode::BAD_REQUEST, "Link not valid", message)
        }
    })
}

/// The `submit_url` of the `requestToken` responses: the identity service's `submitToken`
/// request and response, without an access token.
async fn submit_token(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    #[derive(Deserialize)]
    struct Body {
        sid: String,
        client_secret: String,
        token: String,
    }
    let body: Body = serde_json::from_slice(incoming.request.body()).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::not_json(format!("Request body is not valid JSON: {e}"))
        } else {
            Error::bad_json(format!("Malformed request body: {e}"))
        }
    })?;
    services
        .threepids
        .submit_token(&body.sid, &body.client_secret, &body.token)
        .await?;
    Ok(json_value(StatusCode::OK, json!({ "success": true })))
}
