//! Reloading certificates when their files change.

use std::path::PathBuf;
use std::time::Duration;

use super::TlsError;

/// Stops a certificate watch when dropped (see
/// [`ServerTls::reload_on_change`](super::ServerTls::reload_on_change)).
#[derive(Debug)]
#[must_use = "the watch stops when the guard is dropped"]
pub struct ReloadGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReloadGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the watched files hold (`None`: unreadable right now).
fn snapshot(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|path| std::fs::read(path).ok()).collect()
}

/// Every `interval`, compares the files' contents with the last seen and calls `reload` when they
/// changed. Contents, not modification times: a rotation that keeps the mtime (a copy with `-p`,
/// a coarse clock) is still seen, and a Kubernetes secret's symlink swap too.
pub(super) fn watch(
    files: Vec<PathBuf>,
    interval: Duration,
    side: &'static str,
    reload: impl Fn() -> Result<(), TlsError> + Send + 'static,
) -> ReloadGuard {
    let interval = interval.max(Duration::from_millis(10));
    let task = tokio::spawn(async move {
        let mut seen = snapshot(&files);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let now = snapshot(&files);
            if now == seen {
                continue;
            }
            // A rotation writes several files: the half-written state fails and is retried at
            // the next change, which the other file's write is.
            seen = now;
            match reload() {
                Ok(()) => tracing::info!(side, files = ?files, "TLS certificates reloaded"),
                Err(err) => tracing::warn!(
                    side,
                    "TLS certificates not reloaded, the previous ones stay: {err}"
                ),
            }
        }
    });
    ReloadGuard { task }
}
