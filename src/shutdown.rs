//! OS signals: the first SIGTERM or SIGINT cancels the shutdown token
//! (stop accepting, drain); a second one exits the process at once. SIGHUP requests a reload.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status for a process ended by a second signal: 128 + the signal number, the shell's
/// convention for "killed by signal".
const EXIT_INTERRUPTED: i32 = 128 + 2;
const EXIT_TERMINATED: i32 = 128 + 15;

/// Listens for SIGTERM/SIGINT in the background and cancels `token` on the first one.
///
/// Must be called inside a tokio runtime. Fails only if the signal handlers cannot be installed.
pub fn watch(token: CancellationToken) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (name, code) = tokio::select! {
                _ = terminate.recv() => ("SIGTERM", EXIT_TERMINATED),
                _ = interrupt.recv() => ("SIGINT", EXIT_INTERRUPTED),
            };
            if first {
                first = false;
                tracing::info!(
                    signal = name,
                    "shutting down (signal again to exit at once)"
                );
                token.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(code);
            }
        }
    });
    Ok(())
}

/// Requests a config reload on every SIGHUP (the conventional "re-read your config" signal).
///
/// Must be called inside a tokio runtime. Fails only if the signal handler cannot be installed.
pub fn reload_on_hangup(
    trigger: crate::app::ReloadTrigger,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reloading the config file");
                    trigger.request();
                }
            }
        }
    });
    Ok(())
}
