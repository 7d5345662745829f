//! The documented example configuration (`shoal config example`, docs/shoal.example.toml) and
//! the operator's other generated output (shell completions).

use std::path::PathBuf;
use std::process::Command;

use shoal::cluster::config::{example, Config};

const REGENERATE: &str = "regenerate with `cargo run -- config example > docs/shoal.example.toml`";

fn checked_in() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/shoal.example.toml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", path.display()))
}

fn same(what: &str, got: &str) {
    let want = checked_in();
    if got == want {
        return;
    }
    let line = want
        .lines()
        .zip(got.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
    panic!(
        "docs/shoal.example.toml differs from {what} at line {}: {REGENERATE}",
        line + 1
    );
}

#[test]
fn the_checked_in_example_is_what_the_generator_writes() {
    same("the generator", &example::example());
    assert_eq!(
        Config::parse(&checked_in(), "docs/shoal.example.toml").unwrap(),
        Config::default()
    );
}

#[test]
fn shoal_config_example_prints_the_checked_in_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same(
        "`shoal config example`",
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn shoal_completions_bash_names_the_subcommands() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("subscribe"), "{script}");
}
