//! `shoal config`: the documented example configuration, and the check of one.
//!
//! `example` prints every section and key of the configuration with its description and
//! default (optional keys commented out): `docs/shoal.example.toml` is its output, and a test
//! fails when they differ. `check` loads a configuration as `shoal up` does (the file, then
//! the `SHOAL_*` variables), validates it and prints it the same way; a refused one exits 2.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use shoal::cluster::config::{example, Config};

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    cmd: ConfigCmd,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print every section and key, documented, with its default (docs/shoal.example.toml).
    Example,
    /// Load a configuration (the file, then SHOAL_* variables), validate it and print it.
    Check {
        /// TOML config file (none: the defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(a: ConfigArgs) -> Result<()> {
    let text = match a.cmd {
        ConfigCmd::Example => example::example(),
        ConfigCmd::Check { config } => {
            example::render_effective(&Config::from_env_and_file(config.as_deref())?)
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `shoal config example | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
