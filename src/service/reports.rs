//! Content reports (spec: client-server API, reporting content): users report events, rooms
//! and users to the server's administrators. Each report is stored durably before the request
//! is answered; administrators read them with [`Reports::list`]. See `schema/reports.md`.

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    service::users::now_ms,
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `(received_ms, nonce) → Report`: every report, in the order received. The random nonce
    /// keeps reports of the same millisecond apart.
    pub ReportsTable: "reports", (u64, u64) => Report
);

/// Longest accepted reason, in bytes. Reports are free text for a human; this bounds what one
/// request can make the server store.
pub const MAX_REASON_BYTES: usize = 4096;

/// What was reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ReportTarget {
    Event { room_id: String, event_id: String },
    Room { room_id: String },
    User { user_id: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub reporter: String,
    pub target: ReportTarget,
    /// As given; may be empty.
    pub reason: String,
    pub received_ms: u64,
}
impl Record for Report {}

pub struct Reports {
    store: Store,
}

impl Reports {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Stores a report; returns once it is durable.
    pub async fn add(&self, reporter: &str, target: ReportTarget, reason: String) -> Result<()> {
        if reason.len() > MAX_REASON_BYTES {
            return Err(Error::invalid_param(format!(
                "The reason is longer than {MAX_REASON_BYTES} bytes"
            )));
        }
        let report = Report {
            reporter: reporter.to_owned(),
            target,
            reason,
            received_ms: now_ms(),
        };
        // A nonce collision within the same millisecond is astronomically unlikely; the
        // precondition makes it a retry instead of an overwrite.
        for _ in 0..3 {
            let key = (report.received_ms, rand::rng().random::<u64>());
            let mut batch = Batch::new();
            batch.expect_absent::<ReportsTable>(&key);
            batch.put::<ReportsTable>(&key, &report);
            match self.store.commit(batch).await {
                Err(CommitError::Conflict) => continue,
                other => {
                    other?;
                    log::info!("report from {reporter}: {:?}", report.target);
                    return Ok(());
                }
            }
        }
        Err(Error::unknown("Could not store the report"))
    }

    /// Reports in the order received, oldest first, at most `limit`, starting after the report
    /// with key `after` (for paging; `None`: from the first).
    pub fn list(
        &self,
        after: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<((u64, u64), Report)>> {
        let from = after.map(|(ms, nonce)| match nonce.checked_add(1) {
            Some(next) => (ms, next),
            None => (ms + 1, 0),
        });
        Ok(self
            .store
            .range::<ReportsTable>(from.as_ref(), false, limit)?)
    }
}
