//! Domain logic. Each service owns its tables and gets what it depends on passed in; none
//! knows about HTTP.

pub mod account_data;
pub mod e2ee;
pub mod expiring_tokens;
pub mod federation;
pub mod filters;
pub mod guests;
pub mod keys;
pub mod latest;
pub mod mailer;
pub mod media;
pub mod moderation;
pub mod notifier;
pub mod passwords;
pub mod presence;
pub mod profiles;
pub mod push;
pub mod push_rules;
pub mod ratelimit;
pub mod receipts;
pub mod reg_tokens;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod sessions;
pub mod stream;
pub mod sync;
pub mod threepids;
pub mod turn;
pub mod typing;
pub mod uiaa;
pub mod user_directory;
pub mod users;

use std::sync::Arc;

use ruma::UserId;

use crate::{
    config::Config,
    error::{Error, Result},
    service::ratelimit::{Rate, RateLimiter},
    store::{Batch, CommitError},
    store::{Store, StoreError},
};

/// Runs a closure when dropped: work that must follow a commit even if the request that
/// started it is cancelled (pass it as the `hold` of [`stream::Stream::commit`]).
pub struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub fn new(f: F) -> Self {
        Self(Some(f))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The services a request handler can call. Built once at start.
pub struct Services {
    pub config: Arc<Config>,
    pub store: Store,
    /// Shared with `rooms`, which needs to know which users are guests.
    pub users: Arc<users::Users>,
    pub sessions: sessions::Sessions,
    pub uiaa: uiaa::Uiaa,
    pub reg_tokens: reg_tokens::RegTokens,
    pub rate_limiter: RateLimiter,
    pub profiles: profiles::Profiles,
    pub account_data: Arc<account_data::AccountData>,
    pub filters: filters::Filters,
    pub push_rules: Arc<push_rules::PushRules>,
    pub notifications: Arc<push::notifications::Notifications>,
    /// Shared with `sessions`, which deletes a device's pushers with the device.
    pub pushers: Arc<push::pushers::Pushers>,
    pub reports: reports::Reports,
    pub user_directory: user_directory::UserDirectory,
    pub stream: Arc<stream::Stream>,
    pub keys: Arc<keys::ServerKeys>,
    pub notifier: Arc<notifier::Notifier>,
    pub rooms: Arc<rooms::Rooms>,
    /// Inbound PDUs: checked, authorised and stored (`/send`).
    pub pdus: Arc<federation::pdus::Pdus>,
    /// Server-side search over the rooms' events.
    pub search: search::Search,
    /// Sends notifications to push gateways; runs once the server starts it.
    pub delivery: Arc<push::delivery::Delivery>,
    pub typing: typing::Typing,
    pub receipts: receipts::Receipts,
    pub presence: presence::Presence,
    pub media: media::Media,
    pub e2ee: Arc<e2ee::E2ee>,
    /// Member events sent to each device under lazy loading (memory only).
    pub lazy_members: sync::LazyMembers,
    /// Sliding sync connections (in memory; see `sync::sliding`).
    pub sliding: sync::sliding::Connections,
    /// The HTTP client for requests this server makes (push gateways, federation).
    pub outbound: crate::outbound::Outbound,
    /// Signed requests to other homeservers.
    pub federation: Arc<federation::client::FederationClient>,
    /// Other servers' signing keys.
    pub keyring: Arc<federation::keyring::KeyRing>,
    /// Account locks and suspensions.
    pub moderation: moderation::Moderation,
    /// OpenID tokens (shared with the sweep task).
    pub openid_tokens: Arc<expiring_tokens::OpenIdTokens>,
    /// `m.login.token` login tokens (shared with the sweep task).
    pub login_tokens: Arc<expiring_tokens::LoginTokens>,
    /// The durable outbound federation queue (shared with every service that queues).
    pub fed_queue: Arc<federation::queue::Queue>,
    /// Delivers the queue's transactions; runs once the server starts it.
    pub fed_sender: Arc<federation::sender::Sender>,
    /// Fetches the full state of rooms joined with partial state; runs once the server
    /// starts it.
    pub partial_sync: Arc<federation::membership::partial::PartialSync>,
    /// Device lists over federation: local announcements, the remote cache.
    pub fed_devices: Arc<federation::devices::FederatedDevices>,
    /// Inbound transactions in progress.
    pub fed_inbound: federation::receive::Inbound,
    /// E-mail addresses of accounts and their validation sessions.
    pub threepids: threepids::Threepids,
    /// Sends validation mails; `None` when `[email]` is not configured.
    pub mailer: Option<mailer::Mailer>,
    /// Queries to other servers for clients (profiles, aliases, keys, directories).
    pub queries: federation::queries::Queries,
}

/// Why the services could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("server_name {0:?} is not a valid Matrix server name")]
    ServerName(String),
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
    #[error(transparent)]
    Mailer(#[from] mailer::MailerError),
    #[error("cannot build the search index: {0}")]
    Search(String),
    #[error("cannot convert stored data to this version: {0}")]
    Convert(String),
}

impl Services {
    /// Opens the store in the configured data directory and builds every service on it.
    pub fn open(config: Config) -> Result<Arc<Self>, OpenError> {
        let db_dir = config.data_dir.join("db");
        let store = Store::open(
            &db_dir,
            config.storage.engine,
            config.storage.cache_mb * 1024 * 1024,
        )?;
        let keys = keys::ServerKeys::load_or_generate(&config.data_dir.join("keys"))?;
        Self::with_store(config, store, keys)
    }

    pub fn with_store(
        config: Config,
        store: Store,
        keys: keys::ServerKeys,
    ) -> Result<Arc<Self>, OpenError> {
        let server_name = ruma::ServerName::parse(&config.server_name)
            .map_err(|_| OpenError::ServerName(config.server_name.clone()))?;
        let outbound = crate::outbound::Outbound::new(&config.outbound)?;
        let stream = Arc::new(stream::Stream::open(store.clone())?);
        let keys = Arc::new(keys);
        let notifier = Arc::new(notifier::Notifier::new());
        let pushers = Arc::new(push::pushers::Pushers::new(store.clone()));
        let fed_queue = Arc::new(federation::queue::Queue::new(
            store.clone(),
            stream.clone(),
            server_name.clone(),
        ));
        let e2ee = Arc::new(e2ee::E2ee::new(
            store.clone(),
            stream.clone(),
            notifier.clone(),
            server_name.clone(),
            fed_queue.clone(),
        )?);
        let limits = &config.rate_limit;
        let rate_limiter = RateLimiter::new(
            limits.enabled,
            Rate {
                per_second: limits.per_user_per_second,
                burst: limits.per_user_burst,
            },
            Rate {
                per_second: limits.per_ip_per_second,
                burst: limits.per_ip_burst,
            },
        );
        let account_data = Arc::new(account_data::AccountData::new(
            store.clone(),
            stream.clone(),
            notifier.clone(),
        ));
        let push_rules = Arc::new(push_rules::PushRules::new(
            store.clone(),
            stream.clone(),
            notifier.clone(),
        ));
        let notifications = Arc::new(push::notifications::Notifications::new(
            store.clone(),
            push_rules.clone(),
            account_data.clone(),
            server_name.clone(),
        ));
        let users = Arc::new(users::Users::new(
            store.clone(),
            passwords::Passwords::new(config.bcrypt_cost, config.password_hash_concurrency),
        ));
        let rooms = Arc::new(rooms::Rooms::new(
            store.clone(),
            stream.clone(),
            keys.clone(),
            server_name.clone(),
            notifier.clone(),
            notifications.clone(),
            users.clone(),
            fed_queue.clone(),
        ));
        let delivery = Arc::new(push::delivery::Delivery::new(
            store.clone(),
            pushers.clone(),
            notifications.clone(),
            rooms.clone(),
            outbound.clone(),
        ));
        let federation = Arc::new(federation::client::FederationClient::new(
            server_name.clone(),
            keys.clone(),
            outbound.clone(),
        ));
        let mailer = mailer::Mailer::new(&config.email)?;
        let keyring = Arc::new(federation::keyring::KeyRing::new(
            store.clone(),
            keys.clone(),
            server_name.clone(),
            federation.clone(),
            federation::keyring::Notary::from_config(&config.federation.trusted_key_servers),
        ));
        let pdus = Arc::new(
            federation::pdus::Pdus::new(store.clone(), rooms.clone(), keyring.clone())
                .with_remote(federation.clone()),
        );
        let search = search::Search::new(store.clone(), rooms.clone());
        let fed_devices = Arc::new(federation::devices::FederatedDevices::new(
            store.clone(),
            stream.clone(),
            e2ee.clone(),
            rooms.clone(),
            fed_queue.clone(),
            federation.clone(),
        ));
        let fed_sender = Arc::new(federation::sender::Sender::new(
            fed_queue.clone(),
            federation.clone(),
            fed_devices.clone(),
        ));
        let partial_sync = Arc::new(federation::membership::partial::PartialSync::new(
            std::time::Duration::from_secs(config.federation.partial_state_resync_delay_secs),
        ));
        // Unread rows of schema version 7 become read marks, then notification rows of
        // version 8 one row per event, before any request reads them (in this order: the
        // first conversion reads version-8 rows).
        push::conversions::convert_unread_rows(&store)
            .map_err(|e| OpenError::Convert(e.to_string()))?;
        push::conversions::convert_notification_rows(&store)
            .map_err(|e| OpenError::Convert(e.to_string()))?;
        // Events stored before the search index existed are indexed before any request.
        search
            .backfill()
            .map_err(|e| OpenError::Search(e.to_string()))?;
        // Events the previous run stored but did not index yet.
        rooms
            .search_pending
            .load(&store)
            .map_err(|e| OpenError::Search(e.to_string()))?;
        Ok(Arc::new(Self {
            threepids: threepids::Threepids::new(store.clone()),
            mailer,
            media: media::Media::new(store.clone(), &config, server_name.clone()),
            search,
            rooms,
            pdus,
            delivery,
            account_data,
            typing: typing::Typing::new(notifier.clone()),
            lazy_members: sync::LazyMembers::default(),
            sliding: sync::sliding::Connections::default(),
            receipts: receipts::Receipts::new(
                store.clone(),
                stream.clone(),
                notifier.clone(),
                notifications.clone(),
                fed_queue.clone(),
            ),
            notifications,
            keyring,
            queries: federation::queries::Queries::new(federation.clone()),
            federation,
            outbound,
            presence: presence::Presence::new(
                store.clone(),
                stream.clone(),
                notifier.clone(),
                fed_queue.clone(),
            ),
            push_rules,
            users,
            sessions: sessions::Sessions::new(store.clone(), e2ee.clone(), pushers.clone()),
            pushers,
            e2ee,
            uiaa: uiaa::Uiaa::new(),
            reg_tokens: reg_tokens::RegTokens::new(store.clone()),
            rate_limiter,
            profiles: profiles::Profiles::new(store.clone()),
            filters: filters::Filters::new(store.clone()),
            reports: reports::Reports::new(store.clone()),
            user_directory: user_directory::UserDirectory::new(),
            notifier: notifier.clone(),
            stream: stream.clone(),
            keys,
            moderation: moderation::Moderation::new(store.clone()),
            openid_tokens: Arc::new(expiring_tokens::OpenIdTokens::new(store.clone())),
            login_tokens: Arc::new(expiring_tokens::LoginTokens::new(store.clone())),
            fed_queue,
            fed_sender,
            partial_sync,
            fed_devices,
            fed_inbound: Default::default(),
            store,
            config: Arc::new(config),
        }))
    }
}

/// Operations that span several services, shared by the client API and the admin CLI.
impl Services {
    /// User-Interactive Auth with the user's password, for account-management actions
    /// (`kind` names the action and `operation` holds its parameters, so a session cannot be
    /// replayed on another action, nor on the same action with other parameters).
    pub async fn reauthenticate(
        &self,
        kind: &'static str,
        user_id: &UserId,
        client: std::net::IpAddr,
        operation: &serde_json::Value,
        auth: Option<&ruma::api::client::uiaa::AuthData>,
    ) -> Result<()> {
        let request = uiaa::Request {
            kind,
            user: Some(user_id),
            client,
            operation: uiaa::operation_digest(operation),
            flows: uiaa::PASSWORD_FLOWS,
        };
        self.uiaa
            .authorize(request, auth, self.stage_checks())
            .await?;
        Ok(())
    }

    /// What UIAA stages are checked against.
    pub fn stage_checks(&self) -> uiaa::StageChecks<'_> {
        uiaa::StageChecks {
            users: &self.users,
            reg_tokens: &self.reg_tokens,
            threepids: &self.threepids,
        }
    }

    /// The base URL of the links in mails (validated at start when e-mail is on).
    pub fn email_link_base(&self) -> String {
        self.config
            .email
            .link_base(self.config.well_known.client_base_url.as_deref())
    }

    /// Creates an account with a password (admin path: no UIAA, no registration mode),
    /// optionally a server admin.
    pub async fn create_user(&self, user_id: &UserId, password: &str, admin: bool) -> Result<()> {
        let hash = self.users.hash_password(password).await?;
        let mut batch = Batch::new();
        self.users
            .stage_create(&mut batch, user_id, Some(hash), false, admin);
        self.profiles.stage_set_displayname(
            &mut batch,
            user_id,
            Some(user_id.localpart().to_owned()),
        );
        self.store.commit(batch).await.map_err(|e| match e {
            CommitError::Conflict => Error::user_in_use("That user ID is already taken"),
            e => e.into(),
        })
    }

    /// Deactivates an account: no password, no devices, no tokens, no cross-signing keys, no
    /// key backups, no room memberships; the id stays reserved.
    ///
    /// The account change (record, devices and tokens, profile) commits in one batch together
    /// with a pending marker; the rest is done afterwards and the marker removed, and
    /// [`Services::finish_pending_deactivations`] completes it at start if the process died
    /// in between.
    pub async fn deactivate_user(&self, user_id: &UserId) -> Result<()> {
        self.begin_deactivation(user_id).await?;
        log::info!("deactivated {user_id}");
        // The account change is durable and its marker records what is left: a failing
        // follow-up step is finished at the next start rather than failing the request.
        if let Err(e) = self.complete_deactivation(user_id).await {
            log::warn!("deactivation of {user_id} not finished, retried at next start: {e}");
        }
        Ok(())
    }

    /// The atomic part of a deactivation (see [`Services::deactivate_user`]). Public so the
    /// recovery path can be tested; everything else calls `deactivate_user`.
    #[doc(hidden)]
    pub async fn begin_deactivation(&self, user_id: &UserId) -> Result<()> {
        for _ in 0..8 {
            let current = self
                .users
                .get(user_id)?
                .ok_or_else(|| Error::not_found("Unknown user"))?;
            let mut batch = Batch::new();
            self.users.stage_deactivate(&mut batch, user_id, &current);
            self.sessions
                .stage_delete_devices(&mut batch, user_id, None, None)?;
            // Every device's pushers go with it above; this states the invariant on its own:
            // a deactivated account has no pushers, whatever became of their devices.
            self.pushers.stage_delete_user(&mut batch, user_id)?;
            self.profiles.stage_clear(&mut batch, user_id)?;
            self.threepids.stage_remove_user(&mut batch, user_id)?;
            match self.store.commit(batch).await {
                Err(CommitError::Conflict) => continue,
                other => other?,
            }
            self.e2ee.devices_removed(user_id).await;
            return Ok(());
        }
        Err(CommitError::Conflict.into())
    }

    /// The follow-up of a deactivation: every step is idempotent, and the marker is removed
    /// only when all succeeded (otherwise the next start tries again).
    async fn complete_deactivation(&self, user_id: &UserId) -> Result<()> {
        // A login that committed after the deactivation batch read the device list, but before
        // that batch committed, left a device with live tokens: remove whatever remains.
        if !self.sessions.devices(user_id)?.is_empty() {
            let mut batch = Batch::new();
            self.sessions
                .stage_delete_devices(&mut batch, user_id, None, None)?;
            self.store.commit(batch).await?;
            self.e2ee.devices_removed(user_id).await;
        }
        self.e2ee.delete_cross_signing(user_id).await?;
        self.e2ee.delete_all_backups(user_id).await?;
        if self.leave_all_rooms(user_id).await {
            self.users.finish_deactivation(user_id).await?;
        }
        Ok(())
    }

    /// Finishes the deactivations a crash (or a failed step) left pending. Called at start.
    pub async fn finish_pending_deactivations(&self) {
        let pending = match self.users.pending_deactivations() {
            Ok(pending) => pending,
            Err(e) => {
                log::error!("cannot list pending deactivations: {e}");
                return;
            }
        };
        for user_id in pending {
            log::info!("finishing the deactivation of {user_id}");
            // Devices deleted in the deactivation batch had their sweep done already, or by
            // the e2ee service's own start-up sweep.
            if let Err(e) = self.complete_deactivation(&user_id).await {
                log::warn!("cannot finish deactivating {user_id}, retrying at next start: {e}");
            }
        }
    }

    /// Leaves (or rejects) every room the user is in, invited to or knocking on. Whether all
    /// leaves succeeded; a room that refuses is logged (the account is already deactivated).
    async fn leave_all_rooms(&self, user_id: &UserId) -> bool {
        let mut all = true;
        use ruma::events::{room::member::MembershipState, TimelineEventType};
        for membership in [
            MembershipState::Join,
            MembershipState::Invite,
            MembershipState::Knock,
        ] {
            let rooms = match self.rooms.rooms_of(user_id, &membership) {
                Ok(rooms) => rooms,
                Err(e) => {
                    log::warn!("cannot list rooms of {user_id}: {e}");
                    all = false;
                    continue;
                }
            };
            for room_id in rooms {
                let leave = rooms::NewEvent::state(
                    TimelineEventType::RoomMember,
                    user_id.as_str(),
                    serde_json::json!({"membership": "leave"}),
                );
                if let Err(e) = self.rooms.send(&room_id, user_id, leave).await {
                    log::warn!("deactivated {user_id} could not leave {room_id}: {e}");
                    all = false;
                }
            }
        }
        all
    }
}
