//! Logging of the `shoal` command: text (coloured only on a terminal, never with `NO_COLOR`)
//! or JSON lines, on stderr, filtered by `RUST_LOG` (default `info`; an invalid filter is an
//! input error, not silently ignored). A server changes its filter on SIGHUP ([`set_filter`]).
//! What a command reports besides its result ([`say`]: summaries, progress, the fatal error)
//! goes through the same stream in the same format.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer as _, Registry};

use crate::args::InputError;

/// The filter when neither `RUST_LOG` nor the config sets one.
pub const DEFAULT_FILTER: &str = "info";

static JSON: AtomicBool = AtomicBool::new(false);
static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
/// The directives in force, as text.
static CURRENT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn current_filter() -> std::sync::MutexGuard<'static, String> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses a filter (`RUST_LOG` syntax); `origin` names where it came from in the error.
pub fn parse_filter(text: &str, origin: &str) -> Result<EnvFilter, InputError> {
    EnvFilter::builder()
        .with_regex(false)
        .parse(text)
        .map_err(|e| {
            InputError(format!(
                "{origin}={text:?} is not a valid log filter ({e}); use levels error, warn, info, debug or trace, e.g. `info,shoal=debug`"
            ))
        })
}

/// Installs the subscriber. Fails (before anything is logged) when `RUST_LOG` is invalid.
pub fn init(json: bool) -> Result<(), InputError> {
    let text = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => DEFAULT_FILTER.to_string(),
    };
    let filter = parse_filter(&text, "RUST_LOG")?;
    *current_filter() = text;
    let (filter, handle) = reload::Layer::new(filter);
    let _ = RELOAD.set(handle);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    JSON.store(json, Ordering::Relaxed);
    Ok(())
}

/// Replaces the filter of the running process; returns the one it replaced, or `None` when
/// nothing changed.
pub fn set_filter(text: &str, origin: &str) -> Result<Option<String>, InputError> {
    let filter = parse_filter(text, origin)?;
    let mut current = current_filter();
    if *current == text {
        return Ok(None);
    }
    if let Some(h) = RELOAD.get() {
        h.reload(filter)
            .map_err(|e| InputError(format!("cannot change the log filter: {e}")))?;
    }
    Ok(Some(std::mem::replace(&mut *current, text.to_string())))
}

/// Whether logs (and so [`say`]) are JSON lines.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A line for the operator (a summary, progress): plain text on stderr, or a JSON line with
/// `--log-json`. Never filtered out: it is the command's report, not a log.
pub fn say(text: &str) {
    report(text, "INFO", text, serde_json::Map::new());
}

/// A summary: `text` on stderr, or with `--log-json` a JSON line whose `fields` hold
/// `message` and `fields` (the figures as numbers).
pub fn summary(text: &str, message: &str, fields: serde_json::Value) {
    let fields = match fields {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    report(text, "INFO", message, fields);
}

/// The error that ends the command: `error: …` on stderr, or a JSON line at level `ERROR`
/// with its exit code with `--log-json`.
pub fn fatal(text: &str, code: u8) {
    let mut fields = serde_json::Map::new();
    fields.insert("exit_code".into(), code.into());
    report(&format!("error: {text}"), "ERROR", text, fields);
}

/// One line the way the JSON log writes events (`timestamp`, `level`, `fields.message`,
/// `target`), so a reader of the log sees one format.
fn report(
    text: &str,
    level: &str,
    message: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
) {
    if !json() {
        eprintln!("{text}");
        return;
    }
    fields.insert("message".into(), message.into());
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let line = serde_json::json!({
        "timestamp": timestamp,
        "level": level,
        "fields": fields,
        "target": "shoal",
    });
    eprintln!("{line}");
}
