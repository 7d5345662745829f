//! The documented configuration: `shoal config example` and `shoal up --print-config`.
//!
//! What it decides: which sections and keys a [`Config`] has, what each means, and how a
//! configuration is written as commented TOML. Two tables say it all: [`DOCS`] describes every
//! section and key (the text of the field's doc comment), in the order they are written;
//! [`OPTIONAL`] lists the keys that are unset by default (absent from a serialized
//! [`Config::default()`]) with the example value written, commented out, in their place.
//!
//! [`render_effective`] walks a config serialized to a TOML table in [`DOCS`] order: a key that
//! is set is written with its value, an unset optional key commented out with its example,
//! and a key or section missing from [`DOCS`] is still written (after the documented ones,
//! without a description) so no value is ever hidden. [`key_paths`] is the list the
//! `SHOAL_*` environment overlay ([`super::env`]) resolves names against.
//!
//! The tables cannot drift: the tests walk the serialized defaults plus [`OPTIONAL`], and ask
//! the structs themselves (their `deny_unknown_fields` refusal lists every field) for the keys
//! of each section; a key without a description, or a description of no key, fails them.

use super::Config;

/// Every section and key of [`Config`] with its description, in the order they are written.
/// A path is dotted from the top (`transport.handshakes.retry_above`); a section is a path
/// whose value is a table.
pub const DOCS: &[(&str, &str)] = &[
    (
        "cluster",
        "Cluster name: the TLS server name of the hub and every shard.",
    ),
    (
        "data_dir",
        "Where `shoal up` keeps the dev secret and dev certificates it creates.",
    ),
    ("hub", "The hub: where clients get their grants and tokens."),
    ("hub.listen", "UDP address of the hub."),
    (
        "hub.grant_shards",
        "How many ranked shards of the chosen group a grant lists.",
    ),
    ("hub.token_ttl", "Lifetime of a token."),
    (
        "hub.tickets_per_handshake",
        "TLS session tickets sent per hub handshake: one per shard connection the client may \
         open with 0-RTT (primary, failovers), plus spare.",
    ),
    (
        "hub.control_listen",
        "UDP address of the control listener (`shoal-ctl/1`, mutual TLS) where shards in other \
         processes register (`shoal shard --hub ADDR`). Off by default; with \
         `shards.launcher = \"processes\"` an ephemeral loopback port is used when unset.",
    ),
    ("keys", "The cluster secret and the keys derived from it."),
    (
        "keys.secret_file",
        "File holding the cluster secret as 64 hex digits. Without it, the secret comes from \
         `SHOAL_CLUSTER_SECRET`, else from `<data_dir>/cluster.secret` (created by `shoal up`).",
    ),
    (
        "keys.epoch_interval",
        "Token-sealing key rotation interval.",
    ),
    ("tls", "The cluster's certificates (PEM files)."),
    (
        "tls.cert",
        "PEM certificate chain of the cluster (hub and shards). Default: \
         `<data_dir>/cluster.pem`.",
    ),
    (
        "tls.key",
        "PEM private key. Default: `<data_dir>/cluster.key`.",
    ),
    (
        "tls.ca",
        "PEM CA that clients trust. Default: `<data_dir>/ca.pem`.",
    ),
    (
        "shards",
        "The shards: how many, where they listen, what they admit.",
    ),
    ("shards.count", "Embedded shards started with the hub."),
    (
        "shards.groups",
        "Groups the shards are spread over (round robin).",
    ),
    (
        "shards.listen_ip",
        "IP the shards bind; port `base_port + index`, or ephemeral ports when `base_port` is 0.",
    ),
    (
        "shards.base_port",
        "Port of the first shard (see `listen_ip`); 0: ephemeral ports.",
    ),
    ("shards.max_sessions", "Most sessions one shard admits."),
    (
        "shards.socket_buffer_bytes",
        "UDP send and receive buffer size requested for every socket.",
    ),
    (
        "shards.attach_timeout",
        "How long a shard waits for the attach on a new connection.",
    ),
    (
        "shards.replay_cache",
        "Remembered attach nonces per shard (replay protection), bounded.",
    ),
    (
        "shards.tickets_per_handshake",
        "TLS session tickets sent per shard handshake. One replaces the ticket the handshake used (the hub's tickets cover the failovers of a grant); each is kept by the hub too and copied to the other shards of the client's grant.",
    ),
    (
        "shards.launcher",
        "How the cluster's (and the pool's) shards run: inside this process (`embedded`) or each \
         as a `shoal shard` child process linked over the control listener (`processes`).",
    ),
    (
        "shards.program",
        "The `shoal` binary the `processes` launcher runs as `shoal shard` (default: this \
         program).",
    ),
    (
        "shards.hub_link",
        "The address shard processes dial for the control listener, when it is not the \
         listener's own (a relay, a NAT or a balancer in front of it).",
    ),
    (
        "streams",
        "Streams: the synthetic ones, buffers, and the 0-RTT session store.",
    ),
    (
        "streams.synthetic_rate_hz",
        "Chunks per second of every `synth/…` stream.",
    ),
    (
        "streams.synthetic_chunk_bytes",
        "Payload bytes of every synthetic chunk.",
    ),
    (
        "streams.buffer_chunks",
        "Chunks a shard keeps per live stream for subscribers that resume.",
    ),
    (
        "streams.replay_window_chunks",
        "How far back (in chunks) a synthetic stream can be resumed.",
    ),
    (
        "streams.live_standbys",
        "Standby copies of every live stream, on the next shards of its group in rendezvous \
         order (0: not mirrored; a live stream then dies with its shard).",
    ),
    (
        "streams.session_store_entries",
        "Session store capacity (tickets) shared by hub and shards.",
    ),
    (
        "streams.session_ttl",
        "Lifetime of a stored session ticket.",
    ),
    (
        "transport",
        "QUIC settings of every endpoint (hub and shards).",
    ),
    (
        "transport.idle_timeout",
        "QUIC idle timeout (a backstop only; failures are detected with heartbeats).",
    ),
    (
        "transport.heartbeat_interval",
        "A side that sent nothing for this long sends a heartbeat.",
    ),
    (
        "transport.handshakes",
        "What every endpoint (hub and shards) lets into its handshakes: Retry past a backlog, \
         per-source limits.",
    ),
    (
        "transport.handshakes.retry_above",
        "Handshakes in flight above which unvalidated first packets get a Retry.",
    ),
    (
        "transport.handshakes.per_socket",
        "Handshakes in flight from one source address (IP and port).",
    ),
    (
        "transport.handshakes.per_ip",
        "Handshakes in flight from one source IP.",
    ),
    (
        "transport.handshakes.per_ip_rate",
        "New connections a second from one source IP (a token bucket).",
    ),
    (
        "transport.handshakes.per_ip_burst",
        "Depth of the `per_ip_rate` token bucket.",
    ),
    ("shutdown", "How `shoal up` drains on SIGTERM or Ctrl-C."),
    (
        "shutdown.grace",
        "After a go-away, how long clients get to move before connections close.",
    ),
    (
        "admin",
        "The admin HTTP API (probes, mirrors, metrics) of `shoal up`.",
    ),
    (
        "admin.listen",
        "TCP address of the admin API; `\"off\"` disables it. Default `127.0.0.1:4480`. \
         Without `token_file` it must be a loopback address (anyone who reaches it could stop \
         mirrors).",
    ),
    (
        "admin.token_file",
        "File holding the bearer token (trimmed, at least 16 visible ASCII characters) that \
         every request but `GET`/`HEAD` must present as `Authorization: Bearer <token>`. \
         Default: none, the API is open (and so only allowed on loopback). Read at start and \
         on SIGHUP.",
    ),
    (
        "admin.metrics_listen",
        "TCP address of a second listener serving only `GET /metrics`, `/live`, `/ready` and \
         `/health` (for a scraper or a load balancer on a public address while `listen` stays \
         on loopback). Default: none. Needs `listen`.",
    ),
    (
        "admin.mirror_cert",
        "PEM client certificate chain mirrors present to receivers (it must chain to the CA \
         the receivers trust). Default: the cluster certificate.",
    ),
    (
        "admin.mirror_key",
        "PEM private key of `mirror_cert`. Default: the cluster key.",
    ),
    ("profiles", "The hub's client profiles."),
    (
        "profiles.path",
        "The profile database (redb). Unset: profiles live in memory only; `shoal up` uses \
         `<data_dir>/profiles.redb`.",
    ),
    ("profiles.limits", "Bounds and retention."),
    (
        "profiles.limits.max_clients",
        "Most profiles kept, in memory and on disk; past it the least recently seen is evicted.",
    ),
    (
        "profiles.limits.max_history",
        "Sessions kept per profile (0 keeps none); the oldest goes first.",
    ),
    (
        "profiles.limits.max_streams",
        "Stream counters kept per profile.",
    ),
    (
        "profiles.limits.max_requests_per_minute",
        "Requests per client per minute that update its profile; the rest only count as rate \
         limited.",
    ),
    (
        "profiles.limits.retention",
        "A profile not seen for longer is purged.",
    ),
    (
        "profiles.limits.flush_interval",
        "How often the hub writes its profiles to the database.",
    ),
    (
        "pool",
        "The shard pool of `shoal up`: off by default, the cluster keeps `shards.count` shards; \
         on, each group's pool grows and shrinks with the predicted load.",
    ),
    ("pool.enabled", "Turns the shard pool on."),
    (
        "pool.policy",
        "`static`, `reactive` (HPA-like) or `predictive`.",
    ),
    (
        "pool.step",
        "How often the driver reads load and arrivals and resizes.",
    ),
    (
        "pool.target_utilization",
        "Share of a shard's session quota the pool aims to use.",
    ),
    ("pool.min_shards", "Fewest shards per group."),
    ("pool.max_shards", "Most shards per group."),
    (
        "pool.min_lifespan",
        "A shard is never stopped younger than this (no churn).",
    ),
    (
        "pool.idle_stop_after",
        "A shard without sessions this long is stopped (when the pool is above its size).",
    ),
    ("pool.sync_period", "Reactive policy: how often it looks."),
    (
        "pool.plan_ahead",
        "Predictive policy: capacity the forecast needs this far ahead is kept (and warmed).",
    ),
    (
        "lb",
        "QUIC-LB connection IDs: off by default; on, the hub and every shard issue CIDs that \
         carry their server id, so a stateless UDP balancer can route them.",
    ),
    ("lb.enabled", "Turns QUIC-LB connection IDs on."),
    (
        "lb.profile",
        "`encrypted` (the server id under an AES-128 key from the cluster secret), \
         `plaintext`, or `nlb` (AWS NLB's QUIC listener: 8-octet server id, 16-octet CID, \
         plaintext).",
    ),
    (
        "lb.config_id",
        "The configuration's id (0..=6), the first three bits of every CID.",
    ),
    (
        "lb.server_id_len",
        "Octets of server id (4..=15; `nlb`: 8).",
    ),
    (
        "lb.nonce_len",
        "Octets of nonce (4..=18, at most 19 with the server id; `nlb`: 7).",
    ),
    (
        "lb.shards_via",
        "The balancer's address for the shards: grants name it instead of each shard's own \
         (with routing CIDs that reach the shard). Unset: grants name the shards' addresses.",
    ),
    ("log", "Logging of a server process (reloaded on SIGHUP)."),
    (
        "log.filter",
        "The log filter, in `RUST_LOG` syntax (e.g. `info,shoal::hub=debug`). Unset: \
         `RUST_LOG`, else `info`. `RUST_LOG`, when set, wins over this key. Reloaded on SIGHUP.",
    ),
];

/// The keys unset by default, each with the example value (TOML) written commented out in
/// its place.
pub const OPTIONAL: &[(&str, &str)] = &[
    ("hub.control_listen", "\"0.0.0.0:4434\""),
    ("keys.secret_file", "\"/etc/shoal/cluster.secret\""),
    ("tls.cert", "\"/etc/shoal/cluster.pem\""),
    ("tls.key", "\"/etc/shoal/cluster.key\""),
    ("tls.ca", "\"/etc/shoal/ca.pem\""),
    ("shards.program", "\"/usr/local/bin/shoal\""),
    ("shards.hub_link", "\"10.0.0.1:4434\""),
    ("admin.token_file", "\"/etc/shoal/admin.token\""),
    ("admin.metrics_listen", "\"0.0.0.0:9480\""),
    ("admin.mirror_cert", "\"/etc/shoal/mirror.pem\""),
    ("admin.mirror_key", "\"/etc/shoal/mirror.key\""),
    ("profiles.path", "\"/var/lib/shoal/profiles.redb\""),
    ("lb.shards_via", "\"203.0.113.10:4443\""),
    ("log.filter", "\"info,shoal::hub=debug\""),
];

/// Where the lines of a description wrap.
const WIDTH: usize = 100;

const EXAMPLE_HEADER: &str = "\
# shoal configuration: every section and key, each with its default (`shoal config example`).
# Every key is optional and unknown keys are errors. Durations are written like \"500ms\",
# \"10s\", \"1h\". Keys that are unset by default are commented out, with an example value.
#
# Every key can also be set from the environment: SHOAL_<PATH>, the key's dotted path
# upper-cased with each `.` written `__` (SHOAL_HUB__LISTEN=0.0.0.0:4433, SHOAL_DATA_DIR=...).
# The environment wins over this file, and `shoal up`'s flags win over both.

";

const EFFECTIVE_HEADER: &str = "\
# The effective configuration of `shoal up` (the file, then SHOAL_* variables, then flags).
# Unset optional keys are commented out, with an example value.

";

/// The documented defaults: what `shoal config example` prints (and
/// `docs/shoal.example.toml` holds). It parses back to [`Config::default()`].
pub fn example() -> String {
    format!("{EXAMPLE_HEADER}{}", render(&Config::default()))
}

/// `cfg` as documented TOML, unset optional keys commented out: what
/// `shoal up --print-config` prints. It parses back to `cfg`.
pub fn render_effective(cfg: &Config) -> String {
    format!("{EFFECTIVE_HEADER}{}", render(cfg))
}

/// Every key path a [`Config`] has: the leaves of the serialized defaults, then the
/// [`OPTIONAL`] keys.
pub fn key_paths() -> Vec<String> {
    let mut out = Vec::new();
    leaves(&defaults(), "", &mut out);
    out.extend(OPTIONAL.iter().map(|(p, _)| p.to_string()));
    out
}

/// Every section path of a [`Config`] (tables of the serialized defaults), top-down.
pub fn section_paths() -> Vec<String> {
    let mut out = Vec::new();
    sections(&defaults(), "", &mut out);
    out
}

/// The description of `path` (a key or a section), if [`DOCS`] has one.
pub fn doc(path: &str) -> Option<&'static str> {
    DOCS.iter().find(|(p, _)| *p == path).map(|(_, d)| *d)
}

pub(super) fn to_table(cfg: &Config) -> toml::Table {
    match toml::Value::try_from(cfg) {
        Ok(toml::Value::Table(t)) => t,
        // Every field of `Config` is a string, number, bool or table, and `Config` a struct.
        other => unreachable!("a Config serializes to a TOML table, not {other:?}"),
    }
}

fn defaults() -> toml::Table {
    to_table(&Config::default())
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

fn leaves(t: &toml::Table, at: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        match v {
            toml::Value::Table(sub) => leaves(sub, &join(at, k), out),
            _ => out.push(join(at, k)),
        }
    }
}

fn sections(t: &toml::Table, at: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        if let toml::Value::Table(sub) = v {
            let path = join(at, k);
            out.push(path.clone());
            sections(sub, &path, out);
        }
    }
}

/// The table at `path` ("" is the top), if there is one.
fn table_at<'a>(root: &'a toml::Table, path: &str) -> Option<&'a toml::Table> {
    if path.is_empty() {
        return Some(root);
    }
    let mut t = root;
    for seg in path.split('.') {
        t = t.get(seg)?.as_table()?;
    }
    Some(t)
}

/// `(section, key)` of a dotted path.
pub(super) fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('.').unwrap_or(("", path))
}

fn render(cfg: &Config) -> String {
    let root = to_table(cfg);
    // Sections in DOCS order, then any the table has that DOCS lacks.
    let mut order: Vec<String> = vec![String::new()];
    order.extend(
        DOCS.iter()
            .filter(|(p, _)| table_at(&root, p).is_some())
            .map(|(p, _)| p.to_string()),
    );
    let mut all = Vec::new();
    sections(&root, "", &mut all);
    for s in all {
        if !order.contains(&s) {
            order.push(s);
        }
    }
    let mut out = String::new();
    for section in &order {
        let Some(table) = table_at(&root, section) else {
            continue;
        };
        if !section.is_empty() {
            out.push('\n');
            comment(&mut out, doc(section));
            out.push_str(&format!("[{section}]\n"));
        }
        let mut written = Vec::new();
        // A blank line between two keys (none after the header).
        let mut first = true;
        for (path, text) in DOCS {
            let (parent, key) = split(path);
            if parent != section {
                continue;
            }
            match table.get(key) {
                Some(toml::Value::Table(_)) => {}
                Some(v) => {
                    gap(&mut out, &mut first);
                    comment(&mut out, Some(text));
                    out.push_str(&format!("{} = {v}\n", bare(key)));
                    written.push(key);
                }
                None => {
                    if let Some((_, ex)) = OPTIONAL.iter().find(|(p, _)| p == path) {
                        gap(&mut out, &mut first);
                        comment(&mut out, Some(text));
                        out.push_str(&format!("# {} = {ex}\n", bare(key)));
                    }
                }
            }
        }
        // Keys DOCS does not describe (the tests keep this empty) are still written.
        for (k, v) in table {
            if !v.is_table() && !written.contains(&k.as_str()) {
                out.push_str(&format!("{} = {v}\n", bare(k)));
            }
        }
    }
    out
}

fn gap(out: &mut String, first: &mut bool) {
    if !*first {
        out.push('\n');
    }
    *first = false;
}

/// A key as TOML writes it (every key of `Config` is a bare key; quoted otherwise).
fn bare(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

/// `text` as `# ` lines wrapped at [`WIDTH`].
fn comment(out: &mut String, text: Option<&str>) {
    let Some(text) = text else { return };
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of the struct at `section`, from its own `deny_unknown_fields` refusal.
    fn fields(section: &str) -> Vec<String> {
        let mut probe = toml::Table::new();
        probe.insert("__probe__".into(), toml::Value::Integer(0));
        let mut value = toml::Value::Table(probe);
        for seg in section.split('.').filter(|s| !s.is_empty()).rev() {
            let mut t = toml::Table::new();
            t.insert(seg.to_string(), value);
            value = toml::Value::Table(t);
        }
        let e = value
            .try_into::<Config>()
            .expect_err("__probe__ is no field")
            .to_string();
        // "unknown field `__probe__`, expected one of `a`, `b`\nin `section`"
        let listed = e
            .lines()
            .next()
            .and_then(|l| l.split_once("expected"))
            .unwrap_or_else(|| panic!("{section}: no field list in {e:?}"))
            .1;
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_field_of_every_section_is_described_and_every_description_is_of_a_field() {
        let keys = key_paths();
        let mut secs = section_paths();
        secs.insert(0, String::new());
        let mut known: Vec<String> = keys.clone();
        known.extend(secs.iter().filter(|s| !s.is_empty()).cloned());
        for section in &secs {
            for f in fields(section) {
                let path = join(section, &f);
                assert!(
                    known.contains(&path),
                    "{path}: a field of the config that is neither in the serialized defaults \
                     nor in example::OPTIONAL (an optional key? add it there)"
                );
            }
        }
        for path in &known {
            assert!(
                doc(path).is_some(),
                "{path}: no description in example::DOCS"
            );
            let (parent, key) = split(path);
            assert!(
                fields(parent).contains(&key.to_string()),
                "{path}: not a field of [{parent}]"
            );
        }
        for (path, _) in DOCS {
            assert!(
                known.iter().any(|k| k == path),
                "example::DOCS describes {path}, which the config does not have"
            );
        }
        for (path, _) in OPTIONAL {
            let (parent, key) = split(path);
            let defaults = defaults();
            let t = table_at(&defaults, parent).expect("an optional key's section exists");
            assert!(
                !t.contains_key(key),
                "{path} is set by default: not optional"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (path, _) in DOCS {
            assert!(seen.insert(*path), "{path} described twice");
        }
    }

    #[test]
    fn the_example_parses_back_to_the_defaults_and_every_example_value_fits_its_key() {
        let text = example();
        assert_eq!(Config::parse(&text, "example").unwrap(), Config::default());
        for (path, _) in OPTIONAL {
            let (_, key) = split(path);
            assert!(
                text.contains(&format!("\n# {key} = ")),
                "{path} not written commented out"
            );
        }
        // Uncommented, every example value is of its key's type (all at once: mirror_cert and
        // mirror_key go together).
        let mut t = defaults();
        for (path, ex) in OPTIONAL {
            let v: toml::Table = toml::from_str(&format!("v = {ex}")).unwrap();
            let (parent, key) = split(path);
            let mut at = &mut t;
            for seg in parent.split('.').filter(|s| !s.is_empty()) {
                at = at.get_mut(seg).and_then(|v| v.as_table_mut()).unwrap();
            }
            at.insert(key.to_string(), v["v"].clone());
        }
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        c.validate().unwrap();
        assert!(c.tls.cert.is_some() && c.lb.shards_via.is_some());
        let back = Config::parse(&render_effective(&c), "effective").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn descriptions_wrap_under_the_width_and_set_optional_keys_are_written() {
        for line in example().lines() {
            assert!(line.len() <= WIDTH, "{line:?}");
        }
        let mut c = Config::default();
        c.hub.control_listen = Some("127.0.0.1:4434".parse().unwrap());
        let text = render_effective(&c);
        assert!(
            text.contains("\ncontrol_listen = \"127.0.0.1:4434\"\n"),
            "{text}"
        );
        assert!(text.contains("\n# secret_file = "), "{text}");
    }
}
