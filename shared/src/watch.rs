//! Watching a directory for edits (notify), for the files both binaries reload by
//! themselves: the control plane's policies and a site's own policy.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

/// How long a burst of file events is allowed to settle (an editor writing, renaming)
/// before the change is acted on.
const SETTLE: Duration = Duration::from_millis(200);

/// Changes seen in a watched directory.
pub struct Changes {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}

impl Changes {
    /// Waits for the next change, then for the burst it starts to settle. `None` when
    /// the watcher has stopped.
    pub async fn next(&mut self) -> Option<()> {
        self.events.recv().await?;
        tokio::time::sleep(SETTLE).await;
        while self.events.try_recv().is_ok() {}
        Some(())
    }
}

/// Watches `dir` (not recursively) for changes to the files `wanted` accepts.
pub fn watch_dir(
    dir: &Path,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
) -> Result<Changes, String> {
    use notify::{RecursiveMode, Watcher};
    let (tx, events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| wanted(p))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    Ok(Changes {
        _watcher: watcher,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_edit_to_a_wanted_file_is_seen_once_per_burst() {
        let dir = tempfile::tempdir().unwrap();
        let mut changes =
            watch_dir(dir.path(), |p| p.extension().is_some_and(|x| x == "toml")).unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        std::fs::write(dir.path().join("a.toml"), "x").unwrap();
        std::fs::write(dir.path().join("a.toml"), "y").unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a change")
            .expect("still watching");
        let again = tokio::time::timeout(Duration::from_millis(500), changes.next()).await;
        assert!(again.is_err(), "one notice for the burst");
    }
}
