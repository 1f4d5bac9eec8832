//! Watching a directory for edits (notify), for the files both binaries reload by
//! themselves: the control plane's policies and certificate, a site's own policy and
//! update lock.
//!
//! One notify watcher serves the whole process, whatever the number of watched
//! directories: inotify instances are a small per-user budget (128 by default) that
//! other software on a site host also draws on, and a process that simulates many
//! agents would exhaust it. Where no watcher can be had (the budget is spent, or the
//! file system gives no events), the directory is polled instead, so a change is
//! always seen, only later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::warn;

/// How long a burst of file events is allowed to settle (an editor writing, renaming)
/// before the change is acted on.
const SETTLE: Duration = Duration::from_millis(200);
/// How often a directory is looked at when it cannot be watched.
const POLL: Duration = Duration::from_secs(2);

type Wanted = Box<dyn Fn(&Path) -> bool + Send>;

/// One interested party: which files of its directory it cares about, and where to say so.
struct Subscriber {
    id: u64,
    wanted: Wanted,
    tx: mpsc::UnboundedSender<()>,
}

/// The subscribers by watched directory. The watcher's callback locks only this, so
/// that it never waits on a (un)watch call in progress.
type Table = Arc<Mutex<HashMap<PathBuf, Vec<Subscriber>>>>;

/// The process's watcher and its table.
struct Hub {
    /// Serialises (un)subscribing, so the table and the watched set agree. `None` when
    /// no watcher could be created.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    table: Table,
    next: std::sync::atomic::AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| {
        let table = Table::default();
        let dispatch = table.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let table = lock(&dispatch);
            // A lost event (the kernel queue overflowed) could have been anyone's: all
            // look again.
            let Ok(event) = event.map_err(drop).and_then(|e| match e.need_rescan() {
                true => Err(()),
                false => Ok(e),
            }) else {
                for s in table.values().flatten() {
                    let _ = s.tx.send(());
                }
                return;
            };
            for path in &event.paths {
                let Some(subscribers) = path.parent().and_then(|dir| table.get(dir)) else {
                    continue;
                };
                for s in subscribers.iter().filter(|s| (s.wanted)(path)) {
                    let _ = s.tx.send(());
                }
            }
        });
        let watcher = watcher
            .inspect_err(|e| warn!(error = %e, "no file watcher; watched directories are polled"))
            .ok();
        Hub {
            watcher: Mutex::new(watcher),
            table,
            next: Default::default(),
        }
    })
}

/// Changes seen in a watched directory. Dropping it stops the watch.
pub struct Changes {
    events: mpsc::UnboundedReceiver<()>,
    subscription: Option<(PathBuf, u64)>,
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

    /// Whether changes are found by polling rather than reported by the system.
    pub fn polled(&self) -> bool {
        self.subscription.is_none()
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        let Some((dir, id)) = self.subscription.take() else {
            return;
        };
        let hub = hub();
        let mut watcher = lock(&hub.watcher);
        let last = {
            let mut table = lock(&hub.table);
            let subscribers = table.entry(dir.clone()).or_default();
            subscribers.retain(|s| s.id != id);
            let last = subscribers.is_empty();
            if last {
                table.remove(&dir);
            }
            last
        };
        if last && let Some(watcher) = watcher.as_mut() {
            use notify::Watcher;
            let _ = watcher.unwatch(&dir);
        }
    }
}

/// Watches `dir` (not recursively) for changes to the files `wanted` accepts. It
/// fails only when the directory cannot be read at all.
pub fn watch_dir(
    dir: &Path,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
) -> Result<Changes, String> {
    use notify::{RecursiveMode, Watcher};
    std::fs::read_dir(dir).map_err(|e| format!("watching {}: {e}", dir.display()))?;
    // Events name files by the absolute path the directory was watched under.
    let absolute = std::env::current_dir()
        .map(|cwd| cwd.join(dir))
        .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    let dir = absolute.as_path();
    let (tx, events) = mpsc::unbounded_channel();
    let hub = hub();
    let id = hub.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut watcher = lock(&hub.watcher);
    if let Some(w) = watcher.as_mut() {
        let first = {
            let mut table = lock(&hub.table);
            let subscribers = table.entry(dir.to_owned()).or_default();
            subscribers.push(Subscriber {
                id,
                wanted: Box::new(wanted),
                tx,
            });
            subscribers.len() == 1
        };
        let watched = !first || w.watch(dir, RecursiveMode::NonRecursive).is_ok();
        if watched {
            return Ok(Changes {
                events,
                subscription: Some((dir.to_owned(), id)),
            });
        }
        warn!(dir = %dir.display(), "cannot watch the directory; polling it every {POLL:?}");
        let subscriber = {
            let mut table = lock(&hub.table);
            let subscribers = table.remove(dir).unwrap_or_default();
            subscribers.into_iter().find(|s| s.id == id)
        };
        if let Some(s) = subscriber {
            poll(dir.to_owned(), s.wanted, s.tx);
        }
    } else {
        poll(dir.to_owned(), Box::new(wanted), tx);
    }
    Ok(Changes {
        events,
        subscription: None,
    })
}

/// What the wanted files of a directory look like: name, length, modification time.
fn snapshot(dir: &Path, wanted: &Wanted) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| wanted(path))
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect();
    files.sort();
    files
}

/// Looks at `dir` every [`POLL`] on a thread of its own, until nobody listens.
fn poll(dir: PathBuf, wanted: Wanted, tx: mpsc::UnboundedSender<()>) {
    // Taken now, so that a change made once `watch_dir` returned is always seen.
    let mut last = snapshot(&dir, &wanted);
    let spawned = std::thread::Builder::new()
        .name("watch-poll".into())
        .spawn(move || {
            while !tx.is_closed() {
                std::thread::sleep(POLL);
                let now = snapshot(&dir, &wanted);
                if now != last {
                    last = now;
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start polling a directory; its changes apply at the next start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(p: &Path) -> bool {
        p.extension().is_some_and(|x| x == "toml")
    }

    async fn seen(changes: &mut Changes, within: Duration) -> bool {
        tokio::time::timeout(within, changes.next()).await.is_ok()
    }

    #[tokio::test]
    async fn an_edit_to_a_wanted_file_is_seen_once_per_burst() {
        let dir = tempfile::tempdir().unwrap();
        let mut changes = watch_dir(dir.path(), toml).unwrap();
        assert!(!changes.polled());
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        std::fs::write(dir.path().join("a.toml"), "x").unwrap();
        std::fs::write(dir.path().join("a.toml"), "y").unwrap();
        assert!(seen(&mut changes, Duration::from_secs(5)).await, "a change");
        assert!(
            !seen(&mut changes, Duration::from_millis(500)).await,
            "one notice for the burst"
        );
    }

    #[tokio::test]
    async fn many_watches_share_one_watcher_and_each_keeps_to_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        // Far more than the default budget of inotify instances per user.
        let mut all: Vec<Changes> = (0..300)
            .map(|_| watch_dir(dir.path(), toml).unwrap())
            .collect();
        assert!(all.iter().all(|c| !c.polled()));
        let mut locks = watch_dir(dir.path(), |p| p.ends_with("lock")).unwrap();
        std::fs::write(dir.path().join("a.toml"), "x").unwrap();
        for changes in all.iter_mut().take(3) {
            assert!(seen(changes, Duration::from_secs(5)).await);
        }
        assert!(!seen(&mut locks, Duration::from_millis(300)).await);
        // Dropping the others leaves this one watching.
        all.clear();
        std::fs::write(dir.path().join("lock"), "held").unwrap();
        assert!(seen(&mut locks, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_polled_directory_still_shows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut events) = mpsc::unbounded_channel();
        poll(dir.path().to_owned(), Box::new(toml), tx);
        std::fs::write(dir.path().join("ignored.txt"), "x").unwrap();
        std::fs::write(dir.path().join("a.toml"), "x").unwrap();
        let change = tokio::time::timeout(POLL * 3, events.recv()).await;
        assert_eq!(change.ok().flatten(), Some(()));
        drop(events);
    }

    #[tokio::test]
    async fn a_directory_given_by_a_relative_path_is_watched() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let relative = dir
            .path()
            .strip_prefix(std::env::current_dir().unwrap())
            .unwrap();
        assert!(relative.is_relative());
        let mut changes = watch_dir(relative, toml).unwrap();
        let mut dotted = watch_dir(&relative.join("."), toml).unwrap();
        std::fs::write(dir.path().join("a.toml"), "x").unwrap();
        assert!(seen(&mut changes, Duration::from_secs(5)).await);
        assert!(seen(&mut dotted, Duration::from_secs(5)).await);
    }

    #[test]
    fn an_unreadable_directory_is_an_error_that_names_it() {
        let err = watch_dir(Path::new("/nonexistent/continuum"), toml)
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/continuum"), "{err}");
    }
}
