//! `hearth media …`: list a user's uploads, delete one, purge old media. Runs on the data
//! directory of a stopped server, like the other admin commands.

use clap::Subcommand;
use ruma::UserId;

use crate::{config::parse_date_ms, service::media::parse_mxc, service::Services};

#[derive(Subcommand)]
pub enum MediaCommand {
    /// List a user's uploads: mxc URI, size, content type, upload time, file name.
    List {
        /// Localpart (`alice`) or full user id (`@alice:example.org`).
        user: String,
    },
    /// Delete one media (and its thumbnails) by its `mxc://` URI; for another server's media,
    /// the cached copy (fetched again on the next request).
    Delete { mxc: String },
    /// Delete every media uploaded before a date.
    Purge {
        /// `YYYY-MM-DD` (midnight UTC).
        #[arg(long)]
        before: String,
        /// Purge the cache of other servers' media instead (copies fetched before the date).
        #[arg(long)]
        remote: bool,
    },
}

pub fn run(services: &Services, command: MediaCommand) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let media = &services.media;
    match command {
        MediaCommand::List { user } => {
            let server = &services.config.server_name;
            let full = if user.starts_with('@') {
                user
            } else {
                format!("@{}:{server}", user.to_lowercase())
            };
            let user_id =
                UserId::parse(&full).map_err(|e| format!("invalid user id {full}: {e}"))?;
            let list = media.list_user(&user_id).map_err(|e| e.message)?;
            let total: u64 = list.iter().map(|(_, r)| r.size).sum();
            for (id, r) in &list {
                crate::outln!(
                    "{}\t{}\t{}\t{}\t{}",
                    media.mxc(id),
                    r.size,
                    r.content_type.as_deref().unwrap_or("-"),
                    format_ms(r.created_ms),
                    r.filename.as_deref().unwrap_or("-"),
                )?;
            }
            eprintln!("{user_id}: {} media, {total} bytes", list.len());
        }
        MediaCommand::Delete { mxc } => {
            let (server, id) =
                parse_mxc(&mxc).ok_or_else(|| format!("not an mxc:// URI: {mxc}"))?;
            if server != services.config.server_name {
                if !rt
                    .block_on(media.delete_remote(server, id))
                    .map_err(|e| e.message)?
                {
                    return Err(format!("no cached copy of {mxc}"));
                }
                crate::outln!("deleted the cached copy of {mxc}")?;
                return Ok(());
            }
            if !rt.block_on(media.delete(id)).map_err(|e| e.message)? {
                return Err(format!("no such media: {mxc}"));
            }
            crate::outln!("deleted {mxc}")?;
        }
        MediaCommand::Purge { before, remote } => {
            let ms = parse_date_ms(&before)
                .ok_or_else(|| format!("--before must be a date YYYY-MM-DD, got {before:?}"))?;
            if remote {
                let n = rt
                    .block_on(media.purge_remote_before(ms))
                    .map_err(|e| e.message)?;
                crate::outln!("purged {n} cached remote files fetched before {before}")?;
            } else {
                let n = rt.block_on(media.purge_before(ms)).map_err(|e| e.message)?;
                crate::outln!("purged {n} media uploaded before {before}")?;
            }
        }
    }
    Ok(())
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let ms = parse_date_ms("2024-02-29").unwrap();
        assert_eq!(format_ms(ms), "2024-02-29 00:00:00");
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(parse_date_ms("2023-02-29"), None);
        assert_eq!(parse_date_ms("1970-01-02"), Some(86_400_000));
    }
}
