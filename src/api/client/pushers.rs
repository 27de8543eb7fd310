//! Pushers: `GET /pushers` and `POST /pushers/set` (spec: "Push Notifications", client
//! behaviour). Push rules are in `push.rs`.
//!
//! Raw routes on ruma's paths: the body is read here, so that each missing or mistyped field
//! gets its own Matrix error (ruma would answer all of them with one `M_BAD_JSON`). What a
//! pusher must satisfy (kinds, gateway URL, lengths) is decided by the pushers service.

use std::sync::Arc;

use http::StatusCode;
use ruma::api::client::push::{get_pushers, set_pusher};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    http::{json_value, Incoming, Response, Router},
    service::{
        push::pushers::{check_ids, NewPusher},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.raw_ruma::<get_pushers::v3::Request, _, _>(list);
    router.raw_ruma::<set_pusher::v3::Request, _, _>(set);
}

/// The caller's pushers; nobody else's are ever listed.
async fn list(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let pushers: Vec<Value> = services
        .pushers
        .of_user(&me.user_id)?
        .iter()
        .map(|p| p.client_json())
        .collect();
    Ok(json_value(StatusCode::OK, json!({ "pushers": pushers })))
}

/// What a `/pushers/set` body asks for.
enum Action {
    Delete { app_id: String, pushkey: String },
    Set { pusher: NewPusher, append: bool },
}

/// A string field: `Ok(None)` when absent, `M_BAD_JSON` when of another type.
fn string_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::bad_json(format!("'{name}' must be a string"))),
    }
}

fn parse_body(body: &[u8]) -> Result<Action> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::not_json(format!("The body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(Error::bad_json("The body must be a JSON object"));
    };
    // `kind`, `app_id` and `pushkey` are required whatever the action (`kind` may be null).
    let missing: Vec<&str> = ["kind", "app_id", "pushkey"]
        .into_iter()
        .filter(|name| !body.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        return Err(Error::missing_param(format!(
            "Missing parameters: {}",
            missing.join(", ")
        )));
    }
    let app_id = string_field(&body, "app_id")?.unwrap_or_default();
    let pushkey = string_field(&body, "pushkey")?.unwrap_or_default();
    let kind = match &body["kind"] {
        Value::Null => return Ok(Action::Delete { app_id, pushkey }),
        Value::String(kind) => kind.clone(),
        _ => return Err(Error::bad_json("'kind' must be a string or null")),
    };
    let append = match body.get("append") {
        None => false,
        Some(Value::Bool(append)) => *append,
        Some(_) => return Err(Error::bad_json("'append' must be a boolean")),
    };
    let app_display_name = string_field(&body, "app_display_name")?;
    let device_display_name = string_field(&body, "device_display_name")?;
    let lang = string_field(&body, "lang")?;
    // The one optional string: `null` is the same as leaving it out.
    let profile_tag = match body.get("profile_tag") {
        Some(Value::Null) => None,
        _ => string_field(&body, "profile_tag")?,
    };
    let data = match body.get("data") {
        None => None,
        Some(Value::Object(data)) => Some(data.clone()),
        Some(_) => return Err(Error::bad_json("'data' must be an object")),
    };
    let (Some(app_display_name), Some(device_display_name), Some(lang), Some(data)) =
        (app_display_name, device_display_name, lang, data)
    else {
        let missing: Vec<&str> = ["app_display_name", "device_display_name", "lang", "data"]
            .into_iter()
            .filter(|name| !body.contains_key(*name))
            .collect();
        return Err(Error::missing_param(format!(
            "Missing parameters: {}",
            missing.join(", ")
        )));
    };
    Ok(Action::Set {
        pusher: NewPusher {
            app_id,
            pushkey,
            kind,
            app_display_name,
            device_display_name,
            profile_tag,
            lang,
            data,
        },
        append,
    })
}

/// Creates, replaces (same `app_id` and `pushkey`) or, with `kind: null`, deletes one of the
/// caller's pushers. Deleting a pusher that does not exist succeeds.
async fn set(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    match parse_body(incoming.request.body())? {
        Action::Delete { app_id, pushkey } => {
            check_ids(&app_id, &pushkey)?;
            services
                .pushers
                .remove(&me.user_id, &app_id, &pushkey)
                .await?;
        }
        Action::Set { pusher, append } => {
            // Before the commit as well: a request cancelled after its commit must not leave
            // the pusher without deliveries.
            services.delivery.user_has_pushers(&me.user_id);
            services
                .pushers
                .set(
                    &services.sessions,
                    &me.user_id,
                    &me.device_id,
                    pusher,
                    append,
                )
                .await?;
            services.delivery.user_has_pushers(&me.user_id);
        }
    }
    Ok(json_value(StatusCode::OK, json!({})))
}
