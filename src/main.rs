//! The `hearth` command: serve (default), init, and admin commands for users and registration
//! tokens. Admin commands open the data directory directly, so they run while the server is
//! stopped (the database is locked by a running server, and they say so).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use hearth::{config::Config, service::Services};
use ruma::UserId;

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "A Matrix homeserver in one binary for small hosts"
)]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded defaults apply (localhost,
    /// 127.0.0.1:8008, ./data); HEARTH_* environment variables override either.
    #[arg(long, short, global = true, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Write a commented example configuration.
    Init {
        /// Where to write it.
        #[arg(default_value = "hearth.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Manage local accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage registration tokens (for `registration.mode = "token"`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage uploaded media: list a user's, delete one, purge old ones.
    #[command(subcommand)]
    Media(hearth::cli::media::MediaCommand),
    /// Copy the data directory (store, media, keys, certificates) consistently into DEST,
    /// from the running server through its admin socket, or directly if it is stopped.
    Backup {
        /// A new or empty directory.
        dest: PathBuf,
    },
    /// Restore a backup (or a copied data directory) into the empty configured data directory.
    Restore {
        /// A directory written by `hearth backup`.
        src: PathBuf,
    },
    /// Manage the server's signing key (stop the server first).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Report what a remote server or client would see (name resolution, well-known, TLS
    /// certificate, listeners), or with --data verify a data directory.
    Check(hearth::cli::check::CheckArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Create {
        /// Localpart (`alice`) or full user id (`@alice:example.org`).
        user: String,
        /// Password; read from the HEARTH_PASSWORD environment variable if omitted.
        #[arg(long, env = "HEARTH_PASSWORD", hide_env_values = true)]
        password: String,
        /// Make the account a server admin (admin API: whois, lock, suspend).
        #[arg(long)]
        admin: bool,
    },
    /// Grant (`on`) or revoke (`off`) server admin rights.
    Admin {
        user: String,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Set a new password and log out every device.
    ResetPassword {
        user: String,
        #[arg(long, env = "HEARTH_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Deactivate an account: it can no longer log in and its id is never reused.
    Deactivate { user: String },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key the current one. The previous key stays published as an old
    /// verify key (expired now), so other servers can still check what it signed. Takes
    /// effect at the next start.
    Rotate,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a registration token and print it.
    Create {
        /// The token (1-64 of A-Z a-z 0-9 . _ ~ -); random if omitted.
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (unlimited if omitted).
        #[arg(long)]
        uses: Option<u32>,
        /// Validity from now, in hours (forever if omitted).
        #[arg(long)]
        expires_in_hours: Option<u64>,
    },
    /// List tokens with their uses and expiry.
    List,
    /// Delete a token.
    Revoke { token: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hearth: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .parse_filters(&config.log_level)
        .format_timestamp_millis()
        .init();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Init { path, force } => init(&path, force),
        Command::User(command) => admin(config, |services| user_command(services, command)),
        Command::Token(command) => admin(config, |services| token_command(services, command)),
        Command::Media(command) => admin(config, |services| {
            hearth::cli::media::run(services, command)
        }),
        Command::Backup { dest } => hearth::cli::backup::backup(&config, &dest),
        Command::Restore { src } => hearth::cli::backup::restore(&config, &src),
        Command::Check(args) => hearth::cli::check::run(&config, args),
        Command::Keys(KeysCommand::Rotate) => admin(config, rotate_keys),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`hearth user list | head`): nothing to report.
        Err(message) if message == hearth::cli::OUTPUT_CLOSED => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hearth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// How long blocking work still running after the server stopped (an online backup streaming
/// to a reader that stalls, a password hash) may hold up the exit. Dropping a runtime waits
/// for such work without limit; together with the drain deadline this stays well below
/// systemd's stop timeout. Every acknowledged write is durable already: what is cut off here
/// is only an answer nobody can receive any more (a backup in progress fails and says so).
const BLOCKING_WORK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

fn serve(config: Config) -> Result<(), String> {
    let runtime = runtime()?;
    let result = serve_on(&runtime, config);
    runtime.shutdown_timeout(BLOCKING_WORK_DEADLINE);
    result
}

fn serve_on(runtime: &tokio::runtime::Runtime, config: Config) -> Result<(), String> {
    runtime.block_on(async {
        let server = hearth::server::start(config)
            .await
            .map_err(|e| e.to_string())?;
        hearth::memory::drop_startup_pages();
        shutdown_signal().await;
        log::info!(
            "shutting down: waking long-polls, finishing requests (at most {}s)",
            hearth::http::listener::DRAIN_DEADLINE.as_secs()
        );
        tokio::select! {
            _ = server.stop() => {}
            _ = shutdown_signal() => {
                // Every acknowledged write is already durable: a second signal may cut the
                // drain short without losing anything.
                log::warn!("second signal: exiting without waiting for requests");
                return Err("stopped by a second signal".to_owned());
            }
        }
        log::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init(path: &std::path::Path, force: bool) -> Result<(), String> {
    if path.exists() && !force {
        return Err(format!(
            "{} exists; pass --force to overwrite it",
            path.display()
        ));
    }
    std::fs::write(path, hearth::config::EXAMPLE_CONFIG)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    hearth::outln!(
        "wrote {}; edit server_name before the first start",
        path.display()
    )?;
    Ok(())
}

fn admin(config: Config, run: impl FnOnce(&Services) -> Result<(), String>) -> Result<(), String> {
    let data_dir = config.data_dir.clone();
    let services = Services::open(config).map_err(|e| {
        format!(
            "cannot open the database in {} ({e}); is the server running?",
            data_dir.display()
        )
    })?;
    run(&services)
}

/// Runs through [`admin`] so that a running server (which holds the database) is refused: it
/// would keep signing with the key it loaded while the files say it was retired.
fn rotate_keys(services: &Services) -> Result<(), String> {
    let dir = services.config.data_dir.join("keys");
    let now = hearth::service::users::now_ms();
    let rotation =
        hearth::service::keys::ServerKeys::rotate(&dir, now).map_err(|e| e.to_string())?;
    if let Some(retired) = rotation.retired {
        hearth::outln!("retired {retired}: published as an old verify key, expired now")?;
    }
    hearth::outln!(
        "new signing key {}; it is used from the next start",
        rotation.current
    )?;
    Ok(())
}

fn parse_user(services: &Services, user: &str) -> Result<ruma::OwnedUserId, String> {
    let server = &services.config.server_name;
    let full = if user.starts_with('@') {
        user.to_owned()
    } else {
        format!("@{}:{server}", user.to_lowercase())
    };
    let user_id = UserId::parse(&full).map_err(|e| format!("invalid user id {full}: {e}"))?;
    if user_id.server_name().as_str() != server.as_str() {
        return Err(format!("{user_id} is not a user of this server ({server})"));
    }
    Ok(user_id)
}

fn user_command(services: &Services, command: UserCommand) -> Result<(), String> {
    let rt = runtime()?;
    match command {
        UserCommand::Create {
            user,
            password,
            admin,
        } => {
            let user_id = parse_user(services, &user)?;
            rt.block_on(services.create_user(&user_id, &password, admin))
                .map_err(|e| e.message)?;
            let what = if admin { " (server admin)" } else { "" };
            hearth::outln!("created {user_id}{what}")?;
        }
        UserCommand::Admin { user, state } => {
            let user_id = parse_user(services, &user)?;
            let admin = matches!(state, OnOff::On);
            rt.block_on(services.users.set_admin(&user_id, admin))
                .map_err(|e| e.message)?;
            let now = if admin { "is" } else { "is no longer" };
            hearth::outln!("{user_id} {now} a server admin")?;
        }
        UserCommand::ResetPassword { user, password } => {
            let user_id = parse_user(services, &user)?;
            rt.block_on(async {
                services.users.set_password(&user_id, &password).await?;
                services.sessions.delete_devices(&user_id, None, None).await
            })
            .map_err(|e| e.message)?;
            hearth::outln!("password of {user_id} reset; all its devices are logged out")?;
        }
        UserCommand::Deactivate { user } => {
            let user_id = parse_user(services, &user)?;
            rt.block_on(services.deactivate_user(&user_id))
                .map_err(|e| e.message)?;
            hearth::outln!("deactivated {user_id}")?;
        }
        UserCommand::List => {
            let users = services.users.list().map_err(|e| e.message)?;
            for (user_id, record) in users {
                let state = if record.deactivated {
                    "deactivated"
                } else {
                    "active"
                };
                let restrictions = services
                    .moderation
                    .status(&user_id)
                    .map_err(|e| e.message)?;
                let flags: String = [
                    (record.admin, "\tadmin"),
                    (restrictions.locked, "\tlocked"),
                    (restrictions.suspended, "\tsuspended"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| *name)
                .collect();
                hearth::outln!("{user_id}\t{state}{flags}")?;
            }
        }
    }
    Ok(())
}

fn token_command(services: &Services, command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create {
            token,
            uses,
            expires_in_hours,
        } => {
            let expiry = expires_in_hours.map(|h| hearth::service::users::now_ms() + h * 3_600_000);
            let token = services
                .reg_tokens
                .create(token, uses, expiry)
                .map_err(|e| e.message)?;
            hearth::outln!("{token}")?;
        }
        TokenCommand::List => {
            let now = hearth::service::users::now_ms();
            for (token, t) in services.reg_tokens.list().map_err(|e| e.message)? {
                let uses = t
                    .uses_allowed
                    .map_or("unlimited".to_owned(), |n| n.to_string());
                let expiry = t.expiry_ms.map_or("never".to_owned(), |e| {
                    format!("{}h", e.saturating_sub(now) / 3_600_000)
                });
                let state = if t.is_valid(now) {
                    "valid"
                } else {
                    "spent/expired"
                };
                hearth::outln!(
                    "{token}\tused {}/{uses}\texpires in {expiry}\t{state}",
                    t.completed
                )?;
            }
        }
        TokenCommand::Revoke { token } => {
            if !services.reg_tokens.revoke(&token).map_err(|e| e.message)? {
                return Err(format!("no such token: {token}"));
            }
            hearth::outln!("revoked {token}")?;
        }
    }
    Ok(())
}
