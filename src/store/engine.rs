//! The narrow engine trait. Implemented by `redb_engine` and `sled_engine`; nothing outside
//! `store/` sees it.

/// Which embedded engine backs the store (`[storage] engine` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Redb,
    Sled,
}

/// One operation of a batch, on raw bytes.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put { table: &'static str, key: Vec<u8>, value: Vec<u8> },
    Delete { table: &'static str, key: Vec<u8> },
    /// Precondition: the key holds `value` (`None`: is absent).
    Expect { table: &'static str, key: Vec<u8>, value: Option<Vec<u8>> },
}
