//! SIGINT and SIGTERM as [`Interrupt`] messages. For a run, the first stops it (tasks are
//! cancelled, their process groups get TERM and a grace period) and any later one skips the
//! grace period (KILL now); the dispatcher reads them until every process it started is gone,
//! also after its dispatch loop has ended.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::runner::Interrupt;

/// Installs the handlers and forwards each signal to `tx`. Needs a running tokio runtime.
pub fn forward(tx: mpsc::Sender<Interrupt>) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            // Two signals that arrive before this task runs are both pending and their order is
            // lost; `biased` makes the answer fixed (SIGINT, the person at the terminal) instead
            // of a coin toss between exit codes 130 and 143.
            let which = tokio::select! {
                biased;
                _ = int.recv() => Interrupt::Sigint,
                _ = term.recv() => Interrupt::Sigterm,
            };
            // A full channel means interrupts are already waiting to be read: one more adds
            // nothing, and waiting for room would hold back nothing useful.
            match tx.try_send(which) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Ok(())
}
