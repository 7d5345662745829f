//! The `[log]` section: what `shoal up` logs (reloaded on SIGHUP).

use serde::{Deserialize, Serialize};

/// Logging of a server process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The log filter, in `RUST_LOG` syntax (e.g. `info,shoal::hub=debug`). Unset: `RUST_LOG`,
    /// else `info`. `RUST_LOG`, when set, wins over this key. Reloaded on SIGHUP.
    pub filter: Option<String>,
}
