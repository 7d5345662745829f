//! The signals a `shoal` process answers: SIGINT and SIGTERM stop it (gracefully: a server
//! drains), SIGHUP asks a server to reload; a second stop signal during the drain forces the
//! exit. Commands that do not reload ignore SIGHUP rather than die of it.

use std::time::Duration;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// SIGINT (Ctrl-C) or SIGTERM: stop, gracefully.
    Stop,
    /// SIGHUP: reload what can be reloaded.
    Reload,
}

/// The process's signal streams, registered once (registering replaces the default action:
/// from here on SIGHUP no longer kills the process).
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's ask.
    pub async fn next(&mut self) -> Ask {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Ask::Stop,
                _ = self.term.recv() => Ask::Stop,
                _ = self.hup.recv() => Ask::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Ask::Stop
        }
    }

    /// The next stop signal; reloads are logged as not applying to this command.
    pub async fn stop(&mut self, command: &str) {
        loop {
            match self.next().await {
                Ask::Stop => return,
                Ask::Reload => {
                    tracing::info!(command, "SIGHUP: this command has nothing to reload")
                }
            }
        }
    }

    /// After the first stop signal: a second one ends the process at once (exit 130), with a
    /// line saying so. Spawned beside a drain.
    pub fn force_on_second(mut self, what: &'static str) {
        tokio::spawn(async move {
            self.stop(what).await;
            tracing::warn!("second stop signal: exiting now, without waiting for the {what}");
            // Let the line reach the log.
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::process::exit(130);
        });
    }
}
