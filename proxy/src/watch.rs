//! Watches the configuration file and says when its content really changed: the first step of a
//! reload triggered by the file (`reload` then loads, validates and diffs the bytes sent from here).
//!
//! Files are replaced in many ways, and watching the file itself misses most of them: editors write
//! in place (truncate, then one or more writes), write a temporary file and rename it over, or delete
//! and create; a Kubernetes ConfigMap volume makes `remora.toml` a symlink to `..data/remora.toml`,
//! where `..data` is itself a symlink to a timestamped directory, and an update renames a new `..data`
//! over the old one. So the watch is on directories, not on the file: the one holding the path, and the
//! one holding each symlink target along its chain (re-resolved after every change, since a ConfigMap
//! update moves the target to a new directory). Any event there starts a debounce; once the directory
//! is quiet the file is read through its path and its bytes hashed, and only a new hash is sent on.
//! That covers no-op writes (`touch`, rewriting the same text) and changes to other files nearby.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How many symlinks are followed from the watched path, as Linux's own limit on a path's lookup.
const MAX_LINKS: usize = 40;

/// However busy the directory, the file is read after this many debounce periods: a directory that is
/// never quiet (a log written beside the config) must not hide config changes for ever.
const MAX_DEBOUNCE_PERIODS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the config watcher must be started inside a Tokio runtime")]
    NoRuntime,
    #[error("cannot watch {path}: it names no file")]
    NotAFile { path: PathBuf },
    #[error("cannot start the file system watcher: {0}")]
    Backend(#[source] notify::Error),
    #[error("cannot watch directory {directory}: {source}")]
    Watch { directory: PathBuf, source: notify::Error },
}

/// Watches `path` and sends the file's bytes each time its content changes (not on no-op writes, not
/// for other files in the directory). The first content (at start) is not sent: it is the running config.
///
/// The debounce, reading and hashing run in a Tokio task that owns the notify watcher; dropping the
/// `ConfigWatcher` aborts that task, which stops the watcher, and the receiver then yields `None`. So
/// does dropping the receiver, at the next change.
#[derive(Debug)]
pub struct ConfigWatcher {
    task: JoinHandle<()>,
}

impl ConfigWatcher {
    /// Starts watching. Must be called inside a Tokio runtime (`WatchError::NoRuntime` otherwise).
    ///
    /// `debounce` is how long the watched directories must stay quiet before the file is read (100 ms
    /// is a good default: long enough for an editor's delete + create or a multi-write save, short
    /// enough to feel immediate); a directory that never goes quiet is read every ten periods anyway.
    /// If the file cannot be read after a change, it is read once more a quiet period later (an
    /// editor's delete + create); still unreadable, that is logged and the last content stands.
    ///
    /// Fails if the directory holding `path` cannot be watched; directories further along a symlink
    /// chain are watched on a best-effort basis (logged when they cannot be). A file unreadable at
    /// start is logged, and its first readable content is then sent as a change.
    pub fn start(
        path: PathBuf,
        debounce: Duration,
    ) -> Result<(ConfigWatcher, mpsc::Receiver<Vec<u8>>), WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        if path.file_name().is_none() {
            return Err(WatchError::NotAFile { path });
        }

        // One slot: a wake-up already waiting covers every event after it, since the debounce
        // re-reads the file whatever the event was.
        let (wake, wakes) = mpsc::channel(1);
        let handler = move |event: notify::Result<Event>| {
            match &event {
                Ok(event) if is_read_only(&event.kind) => return,
                Ok(_) => {}
                // A lost event (say, inotify's queue overflowed) is covered by re-reading.
                Err(error) => tracing::warn!(%error, "config watcher: file system notification failed"),
            }
            let _ = wake.try_send(());
        };
        let watcher = notify::recommended_watcher(handler).map_err(WatchError::Backend)?;

        let mut watched = Watched { path, watcher, directories: Vec::new(), last: None };
        let own = directory_of(&watched.path);
        watched
            .watcher
            .watch(&own, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch { directory: own.clone(), source })?;
        watched.directories.push(own);
        watched.refresh();
        // Read only now that the watches are in place, so no change between the two goes unseen.
        match std::fs::read(&watched.path) {
            Ok(bytes) => watched.last = Some(digest(&bytes)),
            Err(error) => tracing::warn!(
                path = %watched.path.display(), %error,
                "config watcher: cannot read the config file at start; its next content counts as a change"
            ),
        }

        let (changes, received) = mpsc::channel(1);
        let task = runtime.spawn(run(watched, wakes, changes, debounce));
        Ok((ConfigWatcher { task }, received))
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the task keeps between changes.
struct Watched {
    path: PathBuf,
    watcher: RecommendedWatcher,
    /// Watched now, the path's own directory first.
    directories: Vec<PathBuf>,
    /// The hash of the last content seen; `None` while none could be read.
    last: Option<u64>,
}

impl Watched {
    /// Follows the symlink chain again and moves the watches to the directories it goes through now.
    fn refresh(&mut self) {
        let wanted = directories(&self.path);
        let Self { watcher, directories, .. } = self;
        directories.retain(|directory| {
            let keep = wanted.contains(directory);
            if !keep {
                // A ConfigMap's old timestamped directory is deleted: its watch went with it, and
                // the error saying so is no news.
                let _ = watcher.unwatch(directory);
            }
            keep
        });
        for directory in wanted {
            if directories.contains(&directory) {
                continue;
            }
            match watcher.watch(&directory, RecursiveMode::NonRecursive) {
                Ok(()) => directories.push(directory),
                // Not kept: tried again after the next change.
                Err(error) => tracing::warn!(
                    directory = %directory.display(), %error,
                    "config watcher: cannot watch a directory on the config file's symlink chain"
                ),
            }
        }
    }

    /// The bytes if they differ from the last content seen, which they then become.
    fn changed(&mut self, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let hash = digest(&bytes);
        if self.last == Some(hash) {
            return None;
        }
        self.last = Some(hash);
        Some(bytes)
    }
}

async fn run(
    mut watched: Watched,
    mut wakes: mpsc::Receiver<()>,
    changes: mpsc::Sender<Vec<u8>>,
    debounce: Duration,
) {
    loop {
        tokio::select! {
            () = changes.closed() => return,
            wake = wakes.recv() => if wake.is_none() { return },
        }
        if !settle(&mut wakes, debounce).await {
            return;
        }
        watched.refresh();
        let bytes = match tokio::fs::read(&watched.path).await {
            Ok(bytes) if !bytes.is_empty() => bytes,
            // Between an editor's delete and create, a rename not yet made, or an in-place write caught
            // between its truncation and its first byte (an empty file is never a configuration): one
            // more quiet period.
            Ok(_) | Err(_) => {
                if !settle(&mut wakes, debounce).await {
                    return;
                }
                watched.refresh();
                match tokio::fs::read(&watched.path).await {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        tracing::warn!(
                            path = %watched.path.display(), %error,
                            "config watcher: cannot read the changed config file; keeping the running config"
                        );
                        continue;
                    }
                }
            }
        };
        if let Some(bytes) = watched.changed(bytes) {
            if changes.send(bytes).await.is_err() {
                return;
            }
        }
    }
}

/// Waits until no wake-up came for `debounce`, or `MAX_DEBOUNCE_PERIODS` of them passed. False when
/// the watcher is gone.
async fn settle(wakes: &mut mpsc::Receiver<()>, debounce: Duration) -> bool {
    let deadline = Instant::now() + debounce * MAX_DEBOUNCE_PERIODS;
    loop {
        let quiet = debounce.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(quiet, wakes.recv()).await {
            Ok(Some(())) => {}
            Ok(None) => return false,
            Err(_elapsed) => return true,
        }
    }
}

/// Opening or reading a file changes nothing (and the watcher's own reads must not wake it); closing a
/// file written to ends a write, so it counts.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

/// For change detection only, not security: a 64-bit SipHash with fixed keys, stable within a process.
fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The directory holding `path` (`.` for a bare file name), with symlinks resolved where it exists.
fn directory_of(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&parent).unwrap_or(parent)
}

/// The directories whose entries decide what `path` reads: the one holding it, then the one holding
/// each symlink target along its chain. Symlinked directories are resolved, so for a ConfigMap's
/// `..data/remora.toml` this is the timestamped directory `..data` points at now.
fn directories(path: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let directory = directory_of(&current);
        if !found.contains(&directory) {
            found.push(directory.clone());
        }
        match std::fs::read_link(&current) {
            // An absolute target replaces the directory in `join`; a relative one is relative to it.
            Ok(target) => current = directory.join(target),
            Err(_) => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(50);
    /// Generous: an emission comes about one debounce after the change, but CI machines stall.
    const EMISSION: Duration = Duration::from_secs(5);

    async fn next(received: &mut mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
        tokio::time::timeout(EMISSION, received.recv())
            .await
            .expect("no emission in time")
            .expect("the watcher ended")
    }

    /// A bounded negative check: a change would be sent about one debounce after the last event
    /// (two when the file was missing), so five periods of silence mean none is coming.
    async fn assert_nothing(received: &mut mpsc::Receiver<Vec<u8>>) {
        if let Ok(emitted) = tokio::time::timeout(DEBOUNCE * 5, received.recv()).await {
            panic!("unexpected emission: {:?}", emitted.map(String::from_utf8));
        }
    }

    fn config_in(directory: &Path, content: &str) -> PathBuf {
        let path = directory.join("remora.toml");
        fs::write(&path, content).unwrap();
        path
    }

    #[tokio::test]
    async fn in_place_rewrite_emits_the_new_content() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (_watcher, mut received) = ConfigWatcher::start(path.clone(), DEBOUNCE).unwrap();

        // Truncate, then several write() calls, as editors saving in place do.
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(b"version").unwrap();
        file.write_all(b" = 2\n").unwrap();
        drop(file);

        assert_eq!(next(&mut received).await, b"version = 2\n");
        assert_nothing(&mut received).await;
    }

    #[tokio::test]
    async fn identical_rewrite_and_touch_emit_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (_watcher, mut received) = ConfigWatcher::start(path.clone(), DEBOUNCE).unwrap();

        fs::write(&path, "version = 1\n").unwrap();
        fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();

        assert_nothing(&mut received).await;
    }

    #[tokio::test]
    async fn temp_file_renamed_over_emits_once() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (_watcher, mut received) = ConfigWatcher::start(path.clone(), DEBOUNCE).unwrap();

        let temporary = directory.path().join(".remora.toml.swp");
        fs::write(&temporary, "version = 2\n").unwrap();
        fs::rename(&temporary, &path).unwrap();

        assert_eq!(next(&mut received).await, b"version = 2\n");
        assert_nothing(&mut received).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_then_create_emits_once() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (_watcher, mut received) = ConfigWatcher::start(path.clone(), DEBOUNCE).unwrap();

        fs::remove_file(&path).unwrap();
        // The editor's gap, while the watcher runs: whether it outlasts the debounce or not, the
        // missing file is read again later rather than reported.
        tokio::time::sleep(DEBOUNCE / 2).await;
        fs::write(&path, "version = 2\n").unwrap();

        assert_eq!(next(&mut received).await, b"version = 2\n");
        assert_nothing(&mut received).await;
    }

    /// A ConfigMap volume's layout and its update, as the kubelet does it.
    #[tokio::test]
    async fn kubernetes_configmap_swap_emits_once() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let publish = |name: &str, content: &str| {
            fs::create_dir(root.join(name)).unwrap();
            fs::write(root.join(name).join("remora.toml"), content).unwrap();
        };
        publish("..2026_a", "version = 1\n");
        symlink("..2026_a", root.join("..data")).unwrap();
        symlink("..data/remora.toml", root.join("remora.toml")).unwrap();
        let path = root.join("remora.toml");
        let (_watcher, mut received) = ConfigWatcher::start(path, DEBOUNCE).unwrap();

        let swap = |from: &str, to: &str| {
            symlink(to, root.join("..data_tmp")).unwrap();
            fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
            fs::remove_dir_all(root.join(from)).unwrap();
        };
        publish("..2026_b", "version = 2\n");
        swap("..2026_a", "..2026_b");
        assert_eq!(next(&mut received).await, b"version = 2\n");
        assert_nothing(&mut received).await;

        // The watch followed the target to its new directory, and the old one's removal did no harm.
        publish("..2026_c", "version = 3\n");
        swap("..2026_b", "..2026_c");
        assert_eq!(next(&mut received).await, b"version = 3\n");
        assert_nothing(&mut received).await;
    }

    #[tokio::test]
    async fn edit_through_a_symlink_into_another_directory_emits_once() {
        let link_directory = tempfile::tempdir().unwrap();
        let target_directory = tempfile::tempdir().unwrap();
        let target = config_in(target_directory.path(), "version = 1\n");
        let path = link_directory.path().join("remora.toml");
        symlink(&target, &path).unwrap();
        let (_watcher, mut received) = ConfigWatcher::start(path, DEBOUNCE).unwrap();

        fs::write(&target, "version = 2\n").unwrap();

        assert_eq!(next(&mut received).await, b"version = 2\n");
        assert_nothing(&mut received).await;
    }

    #[tokio::test]
    async fn another_file_in_the_directory_emits_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (_watcher, mut received) = ConfigWatcher::start(path, DEBOUNCE).unwrap();

        let other = directory.path().join("other.toml");
        fs::write(&other, "noise = 1\n").unwrap();
        fs::write(&other, "noise = 2\n").unwrap();
        fs::remove_file(&other).unwrap();

        assert_nothing(&mut received).await;
    }

    /// Writes spaced well under the debounce but spanning more than one period: only a debounce that
    /// restarts on every event sends a single, final content.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn burst_of_writes_emits_once_with_the_last_content() {
        // Larger than the others, so that a stalled machine does not split the burst.
        let debounce = Duration::from_millis(500);
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 0\n");
        let (_watcher, mut received) = ConfigWatcher::start(path.clone(), debounce).unwrap();

        for version in 1..=10 {
            fs::write(&path, format!("version = {version}\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }

        assert_eq!(next(&mut received).await, b"version = 10\n");
        if let Ok(emitted) = tokio::time::timeout(debounce * 3, received.recv()).await {
            panic!("unexpected emission: {:?}", emitted.map(String::from_utf8));
        }
    }

    #[tokio::test]
    async fn dropping_the_watcher_ends_the_receiver() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (watcher, mut received) = ConfigWatcher::start(path, DEBOUNCE).unwrap();

        drop(watcher);

        let end = tokio::time::timeout(EMISSION, received.recv()).await.expect("the receiver stayed open");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn file_deleted_for_good_keeps_the_last_content() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        let (_watcher, mut received) = ConfigWatcher::start(path.clone(), DEBOUNCE).unwrap();

        fs::remove_file(&path).unwrap();
        assert_nothing(&mut received).await;

        // Back with the running content: still no change.
        fs::write(&path, "version = 1\n").unwrap();
        assert_nothing(&mut received).await;

        fs::write(&path, "version = 2\n").unwrap();
        assert_eq!(next(&mut received).await, b"version = 2\n");
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = config_in(directory.path(), "version = 1\n");
        assert!(matches!(ConfigWatcher::start(path, DEBOUNCE), Err(WatchError::NoRuntime)));
    }
}
