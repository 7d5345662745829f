//! `SHOAL_*` environment variables over the configuration file.
//!
//! The rule: `SHOAL_<PATH>`, where PATH is the key's dotted path upper-cased with each `.`
//! written `__` (`SHOAL_HUB__LISTEN`, `SHOAL_TRANSPORT__HANDSHAKES__RETRY_ABOVE`); a top-level
//! key has no `__` (`SHOAL_DATA_DIR`). Precedence: file < environment < command-line flags
//! (which the commands apply afterwards).
//!
//! Which variables count: a name with `__` must name a key of the config (one of
//! [`super::example::key_paths`], so the optional keys too) — one that names none, or names a
//! section, is an error listing the nearest keys. A name without `__` counts when it is a
//! top-level key and is ignored otherwise: the commands have `SHOAL_*` variables of their own
//! (`SHOAL_CLUSTER_SECRET`, flags read from the environment).
//!
//! Order of work ([`Config::from_vars_and_text`], the pure core):
//! 1. the file alone is parsed and deserialized: its errors name the file, as without
//!    variables;
//! 2. its TOML table (without a file: [`Config::default()`] serialized) gets each variable, in
//!    name order, at its path. The value is parsed as a TOML value (integer, float, bool, array,
//!    inline table), else taken as a string; after each variable the whole config is
//!    deserialized with the usual strict rules, so a value of the wrong type is an error naming
//!    its variable. A TOML value that does not fit its key is tried once more as the string it
//!    was written as (`SHOAL_CLUSTER=true` is the name "true");
//! 3. the result is validated; a value out of range names the file and the variables applied.

use std::ffi::OsStr;
use std::path::Path;

use super::example::{key_paths, section_paths, split};
use super::{Config, ConfigError};

/// What every variable of the configuration starts with.
pub const PREFIX: &str = "SHOAL_";

/// A `SHOAL_*` variable the configuration cannot take.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A name with `__` that is no key; `nearest` are the closest keys (of the same section
    /// when the section exists) as their variables.
    #[error("{var} names no config key; the nearest: {}", listing(nearest))]
    UnknownKey { var: String, nearest: Vec<String> },
    /// A name that is a section's, not a key's; `keys` are the section's keys as variables.
    #[error(
        "{var} names the section [{path}], not a key; set its keys: {}",
        listing(keys)
    )]
    Section {
        var: String,
        path: String,
        keys: Vec<String>,
    },
    /// A value that is not of its key's type (`path`); `why` is the deserializer's word.
    #[error("{var} (`{path}`): {}", why.message())]
    Value {
        var: String,
        path: String,
        why: Box<toml::de::Error>,
    },
    /// A config variable whose value is not UTF-8.
    #[error("{var}: the value is not UTF-8")]
    NotUnicode { var: String },
}

/// `SHOAL_HUB__LISTEN (hub.listen), …` of some variables.
fn listing(vars: &[String]) -> String {
    vars.iter()
        .map(|v| format!("{v} ({})", path_of(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The variable of a key path: `hub.token_ttl` → `SHOAL_HUB__TOKEN_TTL`.
pub fn var_name(path: &str) -> String {
    format!("{PREFIX}{}", path.to_uppercase().replace('.', "__"))
}

/// The key path a variable's name spells (whether or not the config has it).
fn path_of(var: &str) -> String {
    let rest = var.strip_prefix(PREFIX).unwrap_or(var);
    rest.split("__")
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

impl Config {
    /// The configuration of a command: the file at `path` (none: the defaults), then the
    /// process's `SHOAL_*` variables over it (see the [module docs](self)); validated.
    pub fn from_env_and_file(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_vars_and_file(path, std::env::vars_os())
    }

    /// [`Config::from_env_and_file`] with the variables given: `(name, value)` pairs.
    pub fn from_vars_and_file<I, N, V>(path: Option<&Path>, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        match path {
            Some(p) => {
                let origin = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: origin.clone(),
                    source,
                })?;
                Self::from_vars_and_text(Some(&text), &origin, vars)
            }
            None => Self::from_vars_and_text(None, "", vars),
        }
    }

    /// The pure core: `text` (a config file's content, read from `origin`; none: the
    /// defaults) with the `SHOAL_*` variables of `vars` over it, validated. Other variables
    /// are ignored.
    pub fn from_vars_and_text<I, N, V>(
        text: Option<&str>,
        origin: &str,
        vars: I,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let parse_error = |source| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        };
        let (mut cfg, mut table) = match text {
            Some(text) => (
                toml::from_str::<Config>(text).map_err(parse_error)?,
                toml::from_str::<toml::Table>(text).map_err(parse_error)?,
            ),
            None => (
                Config::default(),
                super::example::to_table(&Config::default()),
            ),
        };
        let applied = overlay(&mut table, vars, &mut cfg)?;
        let origin = match (text.is_some(), applied.is_empty()) {
            (_, true) => origin.to_string(),
            (true, false) => format!("{origin} with {}", applied.join(", ")),
            (false, false) => applied.join(", "),
        };
        match cfg.validate() {
            Err(e) if !origin.is_empty() => Err(e.in_file(&origin)),
            other => other.map(|()| cfg),
        }
    }
}

/// Sets each config variable of `vars` in `table` (in name order), checking after each that
/// the table still makes a [`Config`], which ends in `cfg`. Returns the variables applied.
fn overlay<I, N, V>(
    table: &mut toml::Table,
    vars: I,
    cfg: &mut Config,
) -> Result<Vec<String>, EnvError>
where
    I: IntoIterator<Item = (N, V)>,
    N: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let keys = key_paths();
    let sections = section_paths();
    let mut mine = Vec::new();
    for (name, value) in vars {
        // A name that is not UTF-8 spells no key.
        let Some(name) = name.as_ref().to_str() else {
            continue;
        };
        if let Some(path) = target(name, &keys, &sections)? {
            let value = value.as_ref().to_str().map(str::to_string);
            mine.push((name.to_string(), path, value));
        }
    }
    mine.sort();
    let mut applied = Vec::new();
    for (var, path, value) in mine {
        let raw = value.ok_or_else(|| EnvError::NotUnicode { var: var.clone() })?;
        let parsed = parse_value(&raw);
        let retry = (!parsed.is_str()).then(|| toml::Value::String(raw.clone()));
        set(table, &path, parsed);
        let first = match decode(table) {
            Ok(c) => {
                *cfg = c;
                applied.push(var);
                continue;
            }
            Err(e) => e,
        };
        if let Some(s) = retry {
            set(table, &path, s);
            if let Ok(c) = decode(table) {
                *cfg = c;
                applied.push(var);
                continue;
            }
        }
        return Err(EnvError::Value {
            var,
            path,
            why: Box::new(first),
        });
    }
    Ok(applied)
}

/// The key path `name` sets, `None` when it is not a config variable.
fn target(name: &str, keys: &[String], sections: &[String]) -> Result<Option<String>, EnvError> {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let path = path_of(name);
    // Spelled exactly as the rule spells the path (upper case).
    let exact = var_name(&path) == name;
    let is_key = exact && keys.contains(&path);
    if !rest.contains("__") {
        return Ok(is_key.then_some(path));
    }
    if is_key {
        return Ok(Some(path));
    }
    if exact && sections.contains(&path) {
        let prefix = format!("{path}.");
        let keys = keys
            .iter()
            .filter(|k| k.starts_with(&prefix))
            .map(|k| var_name(k))
            .collect();
        return Err(EnvError::Section {
            var: name.to_string(),
            path,
            keys,
        });
    }
    Err(EnvError::UnknownKey {
        var: name.to_string(),
        nearest: nearest(&path, keys),
    })
}

/// The (at most 3) keys closest to `path`, as variables: among the keys of its section when
/// that section exists, else among all.
fn nearest(path: &str, keys: &[String]) -> Vec<String> {
    let (section, _) = split(path);
    let prefix = format!("{section}.");
    let in_section: Vec<&String> = keys.iter().filter(|k| k.starts_with(&prefix)).collect();
    let (pool, skip) = if section.is_empty() || in_section.is_empty() {
        (keys.iter().collect::<Vec<_>>(), 0)
    } else {
        (in_section, prefix.len())
    };
    let want = path.get(skip..).unwrap_or(path);
    let mut scored: Vec<(usize, &String)> = pool
        .into_iter()
        .map(|k| (edit_distance(want, &k[skip..]), k))
        .collect();
    // Stable: equal distances keep the keys' order.
    scored.sort_by_key(|(d, _)| *d);
    scored
        .into_iter()
        .take(3)
        .map(|(_, k)| var_name(k))
        .collect()
}

/// Levenshtein distance (bytes; key paths are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// A variable's value as TOML (`8`, `0.5`, `true`, `[1, 2]`, `{ a = 1 }`, `"quoted"`), else
/// the text itself as a string (`30s`, `0.0.0.0:4433`, `/var/lib/shoal`).
fn parse_value(raw: &str) -> toml::Value {
    if let Ok(mut t) = toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        // One value, not a document smuggled in after a newline.
        if t.len() == 1 {
            if let Some(v) = t.remove("v") {
                return v;
            }
        }
    }
    toml::Value::String(raw.to_string())
}

/// Sets `path` in `root`, making the sections on the way.
fn set(root: &mut toml::Table, path: &str, value: toml::Value) {
    let (section, key) = split(path);
    let mut t = root;
    for seg in section.split('.').filter(|s| !s.is_empty()) {
        let entry = t
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            unreachable!("made a table above")
        };
        t = next;
    }
    t.insert(key.to_string(), value);
}

fn decode(table: &toml::Table) -> Result<Config, toml::de::Error> {
    toml::Value::Table(table.clone()).try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_first_then_strings() {
        assert_eq!(parse_value("100"), toml::Value::Integer(100));
        assert_eq!(parse_value("0.5"), toml::Value::Float(0.5));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert!(parse_value("[1, 2]").is_array());
        assert!(parse_value("{ a = 1 }").is_table());
        assert_eq!(parse_value("\"30s\""), toml::Value::String("30s".into()));
        for s in ["30s", "0.0.0.0:4433", "/var/lib/shoal", "", "1\nb = 2"] {
            assert_eq!(parse_value(s), toml::Value::String(s.into()), "{s:?}");
        }
    }

    #[test]
    fn names_map_to_paths_and_back() {
        assert_eq!(var_name("hub.token_ttl"), "SHOAL_HUB__TOKEN_TTL");
        assert_eq!(path_of("SHOAL_HUB__TOKEN_TTL"), "hub.token_ttl");
        assert_eq!(var_name("data_dir"), "SHOAL_DATA_DIR");
        for k in key_paths() {
            assert_eq!(path_of(&var_name(&k)), k);
        }
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
