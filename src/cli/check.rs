//! `hearth check --data DIR`: verifies a data directory (a stopped server's, or a backup).

use std::path::Path;

use crate::config::Config;
use crate::service::Services;
use crate::store;

/// Opens the data directory as the server would (schema version, migrations, signing keys),
/// reads every row of every table, and prints the row counts.
pub fn check_data(config: &Config, dir: &Path) -> Result<(), String> {
    if crate::cli::backup::server_running(dir) {
        return Err(format!(
            "a server is running on {}; check its backup instead (hearth backup DEST, then \
             hearth check --data DEST)",
            dir.display()
        ));
    }
    let db = dir.join("db");
    let engine = if db.join("db.redb").exists() {
        store::EngineKind::Redb
    } else if db.join("db.sled").exists() {
        store::EngineKind::Sled
    } else {
        return Err(format!(
            "{} holds no database (db/db.redb or db/db.sled)",
            dir.display()
        ));
    };
    let mut config = config.clone();
    config.data_dir = dir.to_owned();
    config.storage.engine = engine;
    let services = Services::open(config).map_err(|e| format!("{}: {e}", dir.display()))?;
    let version = services.store.schema_version().map_err(|e| e.to_string())?;
    let counts = store::table_counts(&services.store).map_err(|e| e.to_string())?;
    let rows: u64 = counts.iter().map(|(_, n)| n).sum();
    println!(
        "{}: {engine} database, schema version {version}, {} tables, {rows} rows, all readable",
        dir.display(),
        counts.len()
    );
    for (table, n) in counts {
        println!("  {table:<28} {n}");
    }
    Ok(())
}

/// `hearth check` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Verify this data directory instead of checking the network view.
    #[arg(long, value_name = "DIR")]
    pub data: Option<std::path::PathBuf>,
}

/// `hearth check`.
pub fn run(config: &Config, args: CheckArgs) -> Result<(), String> {
    match args.data {
        Some(dir) => check_data(config, &dir),
        None => Err("the network check is not available in this build".into()),
    }
}
