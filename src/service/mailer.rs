//! Outgoing mail through the configured SMTP server (`[email]`).

use std::time::Duration;

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::authentication::Credentials,
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

use crate::{
    config::{Email, SmtpSecurity},
    error::{Error, Result},
};

/// Bound on one delivery (connect, TLS, SMTP dialogue): the request that sends the mail waits
/// for it.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the mailer could not be built from the config.
#[derive(Debug, thiserror::Error)]
#[error("[email]: {0}")]
pub struct MailerError(String);

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// The mailer for `config`, or `None` when e-mail is off (no `host`).
    pub fn new(config: &Email) -> Result<Option<Self>, MailerError> {
        let Some(host) = config.host.as_deref() else {
            return Ok(None);
        };
        let error = |e: lettre::transport::smtp::Error| MailerError(e.to_string());
        let builder = match config.security {
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(error)?
            }
            SmtpSecurity::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(error)?
            }
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let mut builder = builder.port(config.port()).timeout(Some(SEND_TIMEOUT));
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let from = config
            .from
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| MailerError(format!("from: {e}")))?;
        Ok(Some(Self {
            transport: builder.build(),
            from,
        }))
    }

    /// Sends a plain-text mail; returns once the SMTP server accepted it.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<()> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| Error::invalid_param("Not a valid e-mail address"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| Error::unknown(format!("Cannot build the mail: {e}")))?;
        let sent = tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                log::warn!("cannot send mail: {e}");
                Err(Error::unknown(
                    "The mail could not be sent; try again later",
                ))
            }
            Err(_) => {
                log::warn!("cannot send mail: SMTP server timed out");
                Err(Error::unknown(
                    "The mail could not be sent; try again later",
                ))
            }
        }
    }
}
