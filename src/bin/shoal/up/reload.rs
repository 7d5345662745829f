//! SIGHUP: `shoal up` reads its configuration (file, environment, flags) and its certificate
//! again and applies what can change while it serves, logging each change:
//!
//! - `log.filter` (unless `RUST_LOG` is set, which wins);
//! - `pool.min_shards` and `pool.max_shards` (the maximum up to the one the cluster started
//!   with: the shard ports are reserved for it);
//! - the certificate and key at `tls.cert`/`tls.key`, on the hub, the embedded shards and the
//!   control listener, for the next handshakes (refused, keeping the old one, when clients
//!   trusting the CA would reject it);
//! - the admin API's bearer token (the content of `admin.token_file`; a new path needs a
//!   restart).
//!
//! What needs a restart, among others: the mirrors' client certificate (`admin.mirror_cert`),
//! and the certificates of shards that run as processes (each reads its own).
//!
//! Every other changed key is named in a warning: it needs a restart. An invalid
//! configuration changes nothing.

use tracing::{info, warn};

use shoal::cluster::config::Config;

use super::{apply_log_filter, effective_config, Running, UpArgs};

/// The keys a reload applies (the token file's content is read again; a new path needs a
/// restart).
const RELOADABLE: [&str; 5] = [
    "log.filter",
    "pool.min_shards",
    "pool.max_shards",
    "tls.cert",
    "tls.key",
];

pub fn reload(a: &UpArgs, running: &mut Config, r: &Running<'_>) {
    info!("SIGHUP: reloading the configuration and the certificate");
    let mut new = match effective_config(a) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                error = crate::render(&e),
                "reload refused: the configuration is invalid; nothing changed"
            );
            return;
        }
    };
    if new.profiles.path.is_none() {
        new.profiles.path.clone_from(&running.profiles.path);
    }
    let mut applied: Vec<String> = Vec::new();
    if new.log.filter != running.log.filter {
        match apply_log_filter(&new) {
            Ok(Some(old)) => {
                applied.push(format!(
                    "log.filter {old} -> {}",
                    new.log
                        .filter
                        .as_deref()
                        .unwrap_or(crate::logs::DEFAULT_FILTER)
                ));
                running.log.filter.clone_from(&new.log.filter);
            }
            Ok(None) if std::env::var_os("RUST_LOG").is_some() => {
                info!("log.filter changed, but RUST_LOG is set and wins");
            }
            Ok(None) => running.log.filter.clone_from(&new.log.filter),
            Err(e) => warn!(error = crate::render(&e), "log.filter not applied"),
        }
    }
    let (old_pool, new_pool) = (&running.pool, &new.pool);
    if (new_pool.min_shards, new_pool.max_shards) != (old_pool.min_shards, old_pool.max_shards) {
        match r.pool {
            None => info!("pool bounds changed; the pool is off (pool.enabled needs a restart)"),
            Some(_) if new_pool.max_shards > r.pool_max_at_start => warn!(
                from = old_pool.max_shards,
                to = new_pool.max_shards,
                at_start = r.pool_max_at_start,
                "pool.max_shards above the value the cluster started with needs a restart (shard ports are reserved for it); the pool bounds are unchanged"
            ),
            Some(p) => {
                p.set_bounds(new_pool.min_shards, new_pool.max_shards);
                applied.push(format!(
                    "pool bounds {}..={} -> {}..={}",
                    old_pool.min_shards,
                    old_pool.max_shards,
                    new_pool.min_shards,
                    new_pool.max_shards
                ));
                running.pool.min_shards = new_pool.min_shards;
                running.pool.max_shards = new_pool.max_shards;
            }
        }
    }
    match reload_certificate(&new, r) {
        Ok(true) => {
            applied.push(format!("certificate from {}", new.cert_path().display()));
            running.tls.cert.clone_from(&new.tls.cert);
            running.tls.key.clone_from(&new.tls.key);
        }
        Ok(false) => {}
        Err(e) => warn!(
            error = e,
            "certificate reload refused; the one in use stays"
        ),
    }
    if let Some(admin) = r.admin {
        match admin.reload_token() {
            Ok(true) => applied.push("admin bearer token".into()),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "admin token reload refused; the one in use stays"),
        }
    }
    let restart = changed_keys(running, &new)
        .into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()))
        .collect::<Vec<_>>();
    if !restart.is_empty() {
        warn!(
            keys = restart.join(", "),
            "changed keys that need a restart (not applied)"
        );
    }
    if applied.is_empty() {
        info!("reload: nothing to change");
    } else {
        info!(changes = applied.join("; "), "reloaded");
    }
}

fn reload_certificate(cfg: &Config, r: &Running<'_>) -> Result<bool, String> {
    let (cert, key) = (cfg.cert_path(), cfg.key_path());
    let chain = shoal::security::tls::read_certs(&cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    let key = shoal::security::tls::read_key(&key)
        .map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    r.cluster
        .reload_certs(chain, &key)
        .map_err(|e| e.to_string())
}

/// The dotted keys whose values differ between `a` and `b`.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out
}

fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff(&path, va, vb, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_by_their_dotted_path() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(changed_keys(&a, &b).is_empty());
        b.pool.max_shards += 1;
        b.log.filter = Some("debug".into());
        b.hub.token_ttl *= 2;
        assert_eq!(
            changed_keys(&a, &b),
            ["hub.token_ttl", "log.filter", "pool.max_shards"]
        );
    }
}
