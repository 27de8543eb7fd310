//! Typed configuration (`hearth.toml`), its defaults, environment overrides and validation.
//!
//! Every field has a default, so an empty file (or no file at all) is a valid configuration that
//! serves `localhost` on `127.0.0.1:8008` with its data in `./data`. Loading is
//! file → `toml::Table` → environment overrides (`HEARTH_<KEY>`, `HEARTH_<SECTION>__<KEY>`,
//! `HEARTH_LISTENERS=addr,addr`) → typed deserialization → [`Config::validate`].

use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::store::EngineKind;

mod tls;
pub use tls::{Tls, TlsMode};
mod turn;
pub use turn::{SupportContact, Turn, DEFAULT_TURN_TTL};
mod email;
pub use email::{is_http_url, Email, SmtpSecurity};
mod federation;
pub use federation::{parse_public_key, Federation, TrustedKeyServer};

/// The fully commented example configuration that `hearth init` writes.
/// Variables the CLI reads itself (config path, admin passwords): not config keys.
const CLI_VARIABLES: &[&str] = &["HEARTH_CONFIG", "HEARTH_PASSWORD"];

pub const EXAMPLE_CONFIG: &str = include_str!("../../examples/hearth.toml");

/// A configuration that cannot be used; its `Display` is meant for the user at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named explicitly could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not match the config's shape.
    #[error("config file {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A `HEARTH_*` environment variable names no setting or holds a value of the wrong type.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A setting has a value outside its allowed range.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// The whole configuration (`hearth.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Matrix server name: user ids are `@name:server_name`. A hostname, IPv4 address or
    /// `[IPv6]` address, with an optional `:port`. Cannot change once users exist.
    pub server_name: String,
    /// The data directory: database, media, signing keys, certificates.
    pub data_dir: PathBuf,
    /// Log level (`error|warn|info|debug|trace`) or an env_logger filter (`hearth=debug,warn`).
    pub log_level: String,
    /// bcrypt cost for password hashes, 4..=31; each step doubles the time per login.
    pub bcrypt_cost: u32,
    /// Password hashes computed at once; more concurrent logins are refused with 429.
    /// 0 (the default): the number of cores minus one, at least one.
    pub password_hash_concurrency: usize,
    /// The addresses to listen on (plain HTTP).
    pub listeners: Vec<Listener>,
    /// Who may register accounts.
    pub registration: Registration,
    /// Request size limits.
    pub limits: Limits,
    /// Per-user and per-IP token-bucket rate limits.
    pub rate_limit: RateLimit,
    /// `/.well-known/matrix/*` delegation.
    pub well_known: WellKnown,
    /// The embedded store.
    pub storage: Storage,
    /// The media repository.
    pub media: Media,
    /// HTTPS: automatic certificates (ACME), certificate files, or off (reverse proxy).
    pub tls: Tls,
    /// Reverse proxies (CIDRs like `127.0.0.1/32`) whose `X-Forwarded-For` / `Forwarded`
    /// headers name the client; from any other peer those headers are ignored. Empty: the
    /// TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Requests this server makes (push gateways; later federation and URL previews).
    pub outbound: Outbound,
    /// TURN relays for VoIP calls (`GET /voip/turnServer`).
    pub turn: Turn,
    /// The SMTP server for validation mails (e-mail addresses, password reset); off if unset.
    pub email: Email,
    /// Talking to other Matrix servers (notaries for signing keys).
    pub federation: Federation,
}

/// Outbound HTTP (`[outbound]`). By default the server refuses to connect to loopback,
/// private, link-local and other non-public addresses (see `crate::outbound::policy`), so a
/// URL a user supplies cannot reach the server's own network.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outbound {
    /// Address blocks (CIDRs like `10.1.2.0/24`) that outbound requests may reach although
    /// the default policy refuses them, e.g. a push gateway on the local network.
    pub allow_networks: Vec<String>,
    /// A PEM file of CA certificates trusted for outbound HTTPS besides the public web roots
    /// (a private CA). Read at start; unreadable or without a certificate is a start error.
    #[serde(deserialize_with = "empty_path_as_none")]
    pub extra_ca_file: Option<PathBuf>,
}

impl Outbound {
    /// `allow_networks`, parsed (validation has refused any that does not parse).
    pub fn allow_networks(&self) -> Vec<Cidr> {
        self.allow_networks
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

/// An address block like `10.0.0.0/8` or `::1/128` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Config {
    /// `trusted_proxies`, parsed (validation has refused any that does not parse).
    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let bits = |a: u128, b: u128, width: u8| {
            let shift = width - self.prefix;
            shift >= width || a >> shift == b >> shift
        };
        match (self.net, ip) {
            (V4(net), V4(ip)) => bits(u32::from(net).into(), u32::from(ip).into(), 32),
            (V6(net), V6(ip)) => bits(net.into(), ip.into(), 128),
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let width = if net.is_ipv4() { 32 } else { 128 };
        // A bare address is a block of one; a `/` needs its length (`10.0.0.0/` is a typo).
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={width}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

/// One listening socket (`[[listeners]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listener {
    /// The socket address to bind, e.g. `127.0.0.1:8008` or `[::]:8008`.
    pub bind: SocketAddr,
}

/// Account registration (`[registration]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registration {
    /// `open`, `token` or `closed`.
    pub mode: RegistrationMode,
    /// Whether anyone may create a guest account (`POST /register?kind=guest`, no
    /// User-Interactive Auth): a restricted account limited to the spec's guest endpoints and
    /// to rooms whose `m.room.guest_access` is `can_join`. Independent of `mode`. When off,
    /// existing guest accounts cannot use their access tokens (they may still upgrade to a full
    /// account, under `mode`).
    pub guests: bool,
}

/// Who may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone who can reach the server.
    #[default]
    Open,
    /// Only with a registration token created by an admin (`m.login.registration_token`).
    Token,
    /// Nobody; accounts are created with `hearth user add`.
    Closed,
}

/// Request size limits (`[limits]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON request body of the client API, in bytes (> 0).
    pub max_request_bytes: u64,
    /// Largest media upload, in bytes (> 0); also the largest remote media this server fetches
    /// and caches for its users.
    pub max_upload_bytes: u64,
    /// Seconds a client may take to send a request head, to send each piece of a body, and
    /// to stay idle between requests on a kept-alive connection (>= 1).
    pub read_timeout_secs: u64,
    /// Open connections over all listeners (>= 1); at the cap, new clients wait until one
    /// closes.
    pub max_connections: u32,
}

impl Limits {
    pub fn read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.read_timeout_secs)
    }
}

/// Token-bucket rate limits (`[rate_limit]`); exceeding them answers `M_LIMIT_EXCEEDED`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Whether rate limiting is on at all.
    pub enabled: bool,
    /// Requests per second refilled into each user's bucket (> 0).
    pub per_user_per_second: f64,
    /// Size of each user's bucket (>= 1).
    pub per_user_burst: u32,
    /// Requests per second refilled into each client IP's bucket (> 0).
    pub per_ip_per_second: f64,
    /// Size of each client IP's bucket (>= 1).
    pub per_ip_burst: u32,
}

/// `/.well-known/matrix/*` delegation (`[well_known]`). An empty string means unset.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WellKnown {
    /// Served at `/.well-known/matrix/client` as `m.homeserver.base_url`; an http(s) URL.
    #[serde(deserialize_with = "empty_as_none")]
    pub client_base_url: Option<String>,
    /// Served at `/.well-known/matrix/server` as `m.server`: `host[:port]` (port 8448 if none).
    #[serde(deserialize_with = "empty_as_none")]
    pub server: Option<String>,
    /// Served at `/.well-known/matrix/support` as `support_page`: an http(s) URL.
    #[serde(deserialize_with = "empty_as_none")]
    pub support_page: Option<String>,
    /// Served at `/.well-known/matrix/support` as `contacts`. With neither this nor
    /// `support_page`, that URL answers 404.
    pub contacts: Vec<SupportContact>,
}

/// The media repository (`[media]`). The largest upload is `limits.max_upload_bytes`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Media {
    /// Total bytes of media each local user may upload; 0 means no quota. Uploads in progress
    /// count against it. Default 1 GiB: ten active users then fit in 10 GiB, a fraction of the
    /// SD card or USB disk of a small board, and one account cannot fill the disk alone.
    /// Raise it (or set 0) in the config for larger servers.
    pub quota_bytes_per_user: u64,
    /// Largest image (width × height, in pixels) the server decodes to make a thumbnail (> 0).
    /// Larger images are refused with 413 `M_TOO_LARGE` (decompression bombs). Default 12 MP,
    /// a phone camera's photo: 48 MB decoded (RGBA), and thumbnails are made one at a time,
    /// which a 512 MB board can afford.
    pub max_thumbnail_pixels: u64,
    /// The "freeze" of the deprecated unauthenticated media endpoints, as `YYYY-MM-DD` (UTC):
    /// media uploaded on or after that day is only served by the authenticated endpoints.
    /// Empty: no freeze.
    #[serde(deserialize_with = "empty_as_none")]
    pub legacy_download_freeze: Option<String>,
}

/// The embedded store (`[storage]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `redb` or `sled`.
    pub engine: EngineKind,
    /// Engine cache size in MiB (>= 1).
    pub cache_mb: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            log_level: "info".into(),
            bcrypt_cost: 12,
            password_hash_concurrency: 0,
            listeners: vec![Listener::default()],
            registration: Registration::default(),
            limits: Limits::default(),
            rate_limit: RateLimit::default(),
            well_known: WellKnown::default(),
            storage: Storage::default(),
            media: Media::default(),
            tls: Tls::default(),
            trusted_proxies: Vec::new(),
            outbound: Outbound::default(),
            turn: Turn::default(),
            email: Email::default(),
            federation: Federation::default(),
        }
    }
}

impl Default for Media {
    fn default() -> Self {
        Media {
            quota_bytes_per_user: 1 << 30,
            max_thumbnail_pixels: 12_000_000,
            legacy_download_freeze: Some("2024-09-01".into()),
        }
    }
}

impl Media {
    /// The freeze as milliseconds since the epoch (midnight UTC of that day), if one is set.
    pub fn legacy_freeze_ms(&self) -> Option<u64> {
        self.legacy_download_freeze
            .as_deref()
            .and_then(parse_date_ms)
    }
}

/// `YYYY-MM-DD` → milliseconds since the Unix epoch at midnight UTC.
pub fn parse_date_ms(date: &str) -> Option<u64> {
    let mut parts = date.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || d < 1
        || d > month_days[m as usize - 1]
    {
        return None;
    }
    // Days from civil (proleptic Gregorian), after Howard Hinnant's algorithm.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400_000)
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            bind: SocketAddr::from(([127, 0, 0, 1], 8008)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1024 * 1024,
            max_upload_bytes: 50 * 1024 * 1024,
            read_timeout_secs: 30,
            max_connections: 512,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            enabled: true,
            per_user_per_second: 10.0,
            per_user_burst: 50,
            per_ip_per_second: 20.0,
            per_ip_burst: 100,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            engine: EngineKind::Redb,
            cache_mb: 8,
        }
    }
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

fn empty_path_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(empty_as_none(d)?.map(PathBuf::from))
}

impl Config {
    /// Loads `path` (or the defaults if `None`), applies `HEARTH_*` variables from the process
    /// environment and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (for tests). A path given explicitly must
    /// exist.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Config::from_toml_str("", "<defaults>", env);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string(), env)
    }

    /// Parses `text` (`origin` names it in errors), applies the `HEARTH_*` variables of `env`
    /// and validates.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        // Typed parse of the text first: its errors carry line and column.
        let mut config: Config = toml::from_str(text).map_err(parse_err)?;
        let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("HEARTH_") && !CLI_VARIABLES.contains(&k.as_str()))
            .collect();
        vars.sort();
        // One variable at a time, so an error names the variable that caused it.
        for (var, raw) in vars {
            let env_err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            let mut first_err = None;
            for value in env_values(&var, &raw) {
                let mut candidate = table.clone();
                set_path(&mut candidate, &var["HEARTH_".len()..], value).map_err(env_err)?;
                match candidate.clone().try_into::<Config>() {
                    Ok(c) => {
                        (config, table, first_err) = (c, candidate, None);
                        break;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e.to_string().trim_end().replace('\n', " "));
                    }
                }
            }
            if let Some(message) = first_err {
                return Err(env_err(message));
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &str, msg: impl FnOnce() -> String) -> Result<(), ConfigError> {
            let (key, message) = (key.to_owned(), msg());
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid { key, message })
            }
        }
        let (name, log) = (&self.server_name, &self.log_level);
        check(split_server_name(name).is_some(), "server_name", || {
            format!("not a Matrix server name (host, IPv4 or [IPv6], optional :port): {name:?}")
        })?;
        check(!self.data_dir.as_os_str().is_empty(), "data_dir", || {
            "must not be empty".into()
        })?;
        check(valid_log_filter(log), "log_level", || {
            format!("expected error|warn|info|debug|trace or a filter like \"hearth=debug,warn\", got {log:?}")
        })?;
        let cost = self.bcrypt_cost;
        check((4..=31).contains(&cost), "bcrypt_cost", || {
            format!("must be between 4 and 31, got {cost}")
        })?;
        check(!self.listeners.is_empty(), "listeners", || {
            "at least one is required".into()
        })?;
        for (i, l) in self.listeners.iter().enumerate() {
            let dup = self.listeners[..i].iter().any(|o| o.bind == l.bind);
            check(!dup, &format!("listeners[{i}].bind"), || {
                format!("{} is listed twice", l.bind)
            })?;
        }
        for (i, cidr) in self.trusted_proxies.iter().enumerate() {
            let parsed = cidr.parse::<Cidr>();
            check(parsed.is_ok(), &format!("trusted_proxies[{i}]"), || {
                parsed.err().unwrap_or_default()
            })?;
        }
        for (i, cidr) in self.outbound.allow_networks.iter().enumerate() {
            let parsed = cidr.parse::<Cidr>();
            check(
                parsed.is_ok(),
                &format!("outbound.allow_networks[{i}]"),
                || parsed.err().unwrap_or_default(),
            )?;
        }
        let (lim, r) = (&self.limits, &self.rate_limit);
        for (key, v) in [
            ("limits.max_request_bytes", lim.max_request_bytes),
            ("limits.max_upload_bytes", lim.max_upload_bytes),
            ("limits.read_timeout_secs", lim.read_timeout_secs),
            ("limits.max_connections", lim.max_connections.into()),
            ("storage.cache_mb", self.storage.cache_mb),
            (
                "media.max_thumbnail_pixels",
                self.media.max_thumbnail_pixels,
            ),
            ("rate_limit.per_user_burst", r.per_user_burst.into()),
            ("rate_limit.per_ip_burst", r.per_ip_burst.into()),
        ] {
            check(v > 0, key, || "must be greater than 0".into())?;
        }
        for (key, v) in [
            ("rate_limit.per_user_per_second", r.per_user_per_second),
            ("rate_limit.per_ip_per_second", r.per_ip_per_second),
        ] {
            check(v.is_finite() && v > 0.0, key, || {
                format!("must be greater than 0, got {v}")
            })?;
        }
        if let Some(date) = &self.media.legacy_download_freeze {
            check(
                parse_date_ms(date).is_some(),
                "media.legacy_download_freeze",
                || format!("must be a date YYYY-MM-DD or empty, got {date:?}"),
            )?;
        }
        self.email
            .validate(self.well_known.client_base_url.as_deref())?;
        if let Some(url) = &self.well_known.client_base_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let host = rest.map_or("", |r| r.split('/').next().unwrap_or_default());
            let ok = !host.is_empty() && !url.contains(char::is_whitespace);
            check(ok, "well_known.client_base_url", || {
                format!("must be an http:// or https:// URL, got {url:?}")
            })?;
        }
        if let Some(server) = &self.well_known.server {
            check(
                split_server_name(server).is_some(),
                "well_known.server",
                || format!("must be \"host[:port]\", got {server:?}"),
            )?;
        }
        self.tls.validate(self)?;
        self.turn.validate()?;
        self.federation.validate()?;
        turn::validate_support(
            self.well_known.support_page.as_deref(),
            &self.well_known.contacts,
        )?;
        Ok(())
    }

    /// The URL clients use to reach this server: `well_known.client_base_url` (without a
    /// trailing `/`) if set; otherwise `http://<server_name host>:<port of the first listener>`,
    /// which suits local testing. Deployments behind a proxy should set `client_base_url`.
    pub fn public_base_url(&self) -> String {
        if let Some(url) = &self.well_known.client_base_url {
            return url.trim_end_matches('/').to_owned();
        }
        let host = split_server_name(&self.server_name).map_or(self.server_name.as_str(), |h| h.0);
        let port = self.listeners.first().map_or(8008, |l| l.bind.port());
        format!("http://{host}:{port}")
    }
}

/// The values to try for an environment variable: its TOML reading (number, boolean, array,
/// quoted string), then the raw string. `HEARTH_LISTENERS` is a comma-separated address list.
fn env_values(var: &str, raw: &str) -> Vec<toml::Value> {
    use toml::Value;
    if var == "HEARTH_LISTENERS" {
        let binds = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
        let tables = binds.map(|b| Value::Table([("bind".into(), b.into())].into_iter().collect()));
        return vec![Value::Array(tables.collect())];
    }
    let mut values = Vec::new();
    match raw.trim().parse::<Value>() {
        Ok(Value::Datetime(_)) | Err(_) => {}
        Ok(v) => values.push(v),
    }
    values.push(Value::String(raw.to_owned()));
    values
}

/// Sets `SECTION__KEY` (lowercased, `__` separating levels) in `table`.
fn set_path(table: &mut toml::Table, name: &str, value: toml::Value) -> Result<(), String> {
    let name = name.to_ascii_lowercase();
    let parts: Vec<&str> = name.split("__").collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("malformed name; use HEARTH_<KEY> or HEARTH_<SECTION>__<KEY>".into());
    }
    let (last, sections) = parts.split_last().expect("split yields at least one part");
    let mut t = table;
    for section in sections {
        let entry = t
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` is not a section"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Splits a Matrix server name into host and port; `None` if it is not one.
fn split_server_name(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        rest[..end].parse::<Ipv6Addr>().ok()?;
        (&s[..end + 2], &rest[end + 1..])
    } else {
        let host_ok = |h: &str| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        let (h, p) = s.rfind(':').map_or((s, ""), |i| (&s[..i], &s[i..]));
        if !host_ok(h) {
            return None;
        }
        (h, p)
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse().ok()?)
        }
        _ => return None,
    };
    Some((host, port))
}

/// A level, or env_logger directives `[module=]level,...` (a single bare word must be a level,
/// so a typo like `debgu` is caught rather than read as a module name).
fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
    let is_module = |m: &str| {
        let m = m.trim();
        !m.is_empty()
            && m.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let directives = s.split('/').next().unwrap_or_default();
    if !directives.contains([',', '=']) {
        return is_level(directives);
    }
    directives
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .all(|d| match d.split_once('=') {
            Some((m, l)) => is_module(m) && is_level(l),
            None => is_level(d) || is_module(d),
        })
}

#[cfg(test)]
mod tests;
