//! Push rules: `GET /pushrules/`, `GET /pushrules/global/` and
//! `GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}` with its `enabled` and `actions`.
//!
//! Every rule lives in the authenticated user's own `global` ruleset; the semantics and errors
//! are in the push rules service. An unknown kind is 400 `M_INVALID_PARAM` (on `PUT` ruma
//! already rejects it while parsing the path).

use std::sync::Arc;

use ruma::api::client::push::{
    delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
    get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
};

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(get_all);
    router.ruma(get_global);
    router.ruma(get_rule);
    router.ruma(set_rule);
    router.ruma(delete_rule);
    router.ruma(get_enabled);
    router.ruma(set_enabled);
    router.ruma(get_actions);
    router.ruma(set_actions);
}

async fn get_all(
    services: Arc<Services>,
    ctx: Ctx,
    _: get_pushrules_all::v3::Request,
) -> Result<get_pushrules_all::v3::Response> {
    let me = ctx.authed()?;
    Ok(get_pushrules_all::v3::Response::new(
        services.push_rules.ruleset(&me.user_id)?,
    ))
}

async fn get_global(
    services: Arc<Services>,
    ctx: Ctx,
    _: get_pushrules_global_scope::v3::Request,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let me = ctx.authed()?;
    Ok(get_pushrules_global_scope::v3::Response::new(
        services.push_rules.ruleset(&me.user_id)?,
    ))
}

async fn get_rule(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_pushrule::v3::Request,
) -> Result<get_pushrule::v3::Response> {
    let me = ctx.authed()?;
    let rule = services
        .push_rules
        .rule(&me.user_id, &body.kind, &body.rule_id)?;
    Ok(get_pushrule::v3::Response::new(rule.into()))
}

async fn set_rule(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_pushrule::v3::Request,
) -> Result<set_pushrule::v3::Response> {
    let me = ctx.authed()?;
    services
        .push_rules
        .set_rule(
            &me.user_id,
            body.rule,
            body.before.as_deref(),
            body.after.as_deref(),
        )
        .await?;
    Ok(set_pushrule::v3::Response::new())
}

async fn delete_rule(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_pushrule::v3::Request,
) -> Result<delete_pushrule::v3::Response> {
    let me = ctx.authed()?;
    services
        .push_rules
        .delete_rule(&me.user_id, &body.kind, &body.rule_id)
        .await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn get_enabled(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_pushrule_enabled::v3::Request,
) -> Result<get_pushrule_enabled::v3::Response> {
    let me = ctx.authed()?;
    let rule = services
        .push_rules
        .rule(&me.user_id, &body.kind, &body.rule_id)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

async fn set_enabled(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_pushrule_enabled::v3::Request,
) -> Result<set_pushrule_enabled::v3::Response> {
    let me = ctx.authed()?;
    services
        .push_rules
        .set_enabled(&me.user_id, &body.kind, &body.rule_id, body.enabled)
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn get_actions(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_pushrule_actions::v3::Request,
) -> Result<get_pushrule_actions::v3::Response> {
    let me = ctx.authed()?;
    let rule = services
        .push_rules
        .rule(&me.user_id, &body.kind, &body.rule_id)?;
    Ok(get_pushrule_actions::v3::Response::new(
        rule.actions().to_vec(),
    ))
}

async fn set_actions(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_pushrule_actions::v3::Request,
) -> Result<set_pushrule_actions::v3::Response> {
    let me = ctx.authed()?;
    services
        .push_rules
        .set_actions(&me.user_id, &body.kind, &body.rule_id, body.actions)
        .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}
