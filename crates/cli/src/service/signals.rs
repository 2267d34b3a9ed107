//! Stopping `tandem run`: the first SIGTERM or SIGINT lets the run in flight finish
//! and starts no other; when most of `[service] grace_period` has passed, or on a
//! second signal, the run is asked to stop at its next safe point (between write
//! batches: what it wrote is stored, the rest waits as durable intents, R18). Then the
//! process exits 0.

use std::time::Duration;

use tandem_engine::StopFlag;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

/// The part of the grace period a run may use before it is stopped at a safe point:
/// the rest is for the batch in flight and the last commit.
const RUN_SHARE: f64 = 0.8;

/// Listens for SIGTERM and SIGINT on the runtime's worker threads, so that a run
/// busy computing on the loop's thread does not delay them. `stopping` turns true on
/// the first signal; `stop` is set on the second, or when the grace period runs out.
pub fn listen(grace: Duration, stop: StopFlag) -> std::io::Result<watch::Receiver<bool>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stopping, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            "{name}: stopping once the run in flight is done (within {}); \
             a second signal stops it at the next safe point",
            humantime::format_duration(grace)
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stopping.send(true);
        tokio::select! {
            _ = term.recv() => info!("SIGTERM again: stopping at the next safe point"),
            _ = int.recv() => info!("SIGINT again: stopping at the next safe point"),
            () = tokio::time::sleep(grace.mul_f64(RUN_SHARE)) => {
                warn!("the grace period is nearly over: stopping the run at the next safe point");
            }
        }
        stop.stop();
    });
    Ok(receiver)
}
