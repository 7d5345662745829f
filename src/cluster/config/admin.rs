//! The `[admin]` section: the admin HTTP API of `shoal up` (probes, mirrors, metrics).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The admin HTTP API (probes, mirrors, metrics) of `shoal up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// TCP address of the admin API; `"off"` disables it. Default `127.0.0.1:4480`. Without
    /// `token_file` it must be a loopback address (anyone who reaches it could stop mirrors).
    #[serde(with = "admin_listen")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token (trimmed, at least 16 visible ASCII characters) that every
    /// request but `GET`/`HEAD` must present as `Authorization: Bearer <token>`. Default: none,
    /// the API is open (and so only allowed on loopback). Read at start and on SIGHUP.
    pub token_file: Option<PathBuf>,
    /// TCP address of a second listener serving only `GET /metrics`, `/live`, `/ready` and
    /// `/health` (for a scraper or a load balancer on a public address while `listen` stays on
    /// loopback). Default: none. Needs `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM client certificate chain mirrors present to receivers (it must chain to the CA the
    /// receivers trust). Default: the cluster certificate.
    pub mirror_cert: Option<PathBuf>,
    /// PEM private key of `mirror_cert`. Default: the cluster key.
    pub mirror_key: Option<PathBuf>,
}

impl AdminConfig {
    /// The rules between the admin settings (see the fields).
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let bad = |key, rule| {
            Err(ConfigError::Invalid {
                path: None,
                key,
                rule,
            })
        };
        if let Some(listen) = self.listen {
            if self.token_file.is_none() && !listen.ip().to_canonical().is_loopback() {
                return bad(
                    "admin.listen",
                    "is not a loopback address and the API would be open to anyone who reaches it: set admin.token_file or bind to loopback (127.0.0.1 or [::1])",
                );
            }
        }
        if let Some(metrics) = self.metrics_listen {
            match self.listen {
                None => {
                    return bad(
                        "admin.metrics_listen",
                        "needs admin.listen (the metrics listener runs with the admin API)",
                    )
                }
                Some(listen) if listen == metrics && listen.port() != 0 => {
                    return bad("admin.metrics_listen", "must differ from admin.listen")
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Parses an admin listen address: `IP:PORT`, or `off` for none.
pub fn parse_admin_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" | "none" => Ok(None),
        t => t
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid admin address {t:?}: expected IP:PORT or \"off\"")),
    }
}

mod admin_listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_admin_listen(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4480)),
            token_file: None,
            metrics_listen: None,
            mirror_cert: None,
            mirror_key: None,
        }
    }
}
