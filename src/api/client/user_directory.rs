//! `POST /user_directory/search` (spec: client-server API, user directory).

use std::sync::Arc;

use ruma::{api::client::user_directory::search_users, OwnedMxcUri};

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(search);
}

async fn search(
    services: Arc<Services>,
    ctx: Ctx,
    body: search_users::v3::Request,
) -> Result<search_users::v3::Response> {
    let me = ctx.authed()?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let (found, limited) = services.user_directory.search(
        &services.rooms,
        &services.profiles,
        &services.users,
        &me.user_id,
        &body.search_term,
        limit,
    )?;
    let results = found
        .into_iter()
        .map(|user| {
            let mut result = search_users::v3::User::new(user.user_id);
            result.display_name = user.display_name;
            result.avatar_url = user
                .avatar_url
                .map(OwnedMxcUri::from)
                .filter(|url| url.is_valid());
            result
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
