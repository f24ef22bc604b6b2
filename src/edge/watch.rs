//! Folder watcher of `watch.dirs`: inotify events through `notify` (`Access(Close(Write))` and
//! `Modify(Name(To))`, i.e. a file written and closed or moved in) forwarded into a tokio
//! channel, a periodic full rescan (missed events, files present at start-up), and the
//! write-stability rule: a file is handed on once a completion event (closed after writing,
//! moved in) says so with `watch.settle = "events"`, otherwise only once its size and mtime have
//! not changed for `watch.stable_secs`. Temporary names (`*.tmp`, `*.part`, dot-files) and DICOMDIR are ignored.
//! Main items: [`FsEvents`], [`scan`], [`Stability`], [`is_candidate`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use thiserror::Error;
use tokio::sync::mpsc;

/// Why watching failed.
#[derive(Debug, Error)]
pub enum WatchError {
    /// inotify could not be set up on a folder (missing, no permission, watch limit reached).
    /// The message gives the configured folder and the kind of error, not the sub-folder notify
    /// names (folder names may name patients; review #14).
    #[error("watch.dirs {path}: {}", notify_kind(source))]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    /// The watcher itself could not be created.
    #[error("file-system watcher: {0}")]
    Init(notify::Error),
    /// A `watch.dirs` entry is missing, not a folder, or cannot be listed.
    #[error("watch.dirs {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What went wrong in a notify error, without the paths it lists.
fn notify_kind(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::Io(io) => io.to_string(),
        notify::ErrorKind::MaxFilesWatch => {
            "inotify watch limit reached (fs.inotify.max_user_watches)".into()
        }
        kind => format!("{kind:?}"),
    }
}

/// Check that every `watch.dirs` entry is a folder this process can list (what `run` needs
/// before it starts, and what `check` reports). Errors: [`WatchError::Folder`].
pub fn check_dirs(dirs: &[PathBuf]) -> Result<(), WatchError> {
    for d in dirs {
        let folder = |source| WatchError::Folder {
            path: d.clone(),
            source,
        };
        if !std::fs::metadata(d).map_err(folder)?.is_dir() {
            return Err(folder(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a folder",
            )));
        }
        std::fs::read_dir(d).map_err(folder)?;
    }
    Ok(())
}

/// Real sub-folders of `dir` (links not followed, dot-folders and unreadable ones left out),
/// `dir` first.
fn folders_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            let mut subs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect();
            subs.sort();
            out.extend(subs);
        }
        i += 1;
    }
    out
}

/// True for a name the watcher may hand on: not a dot-file, not `*.tmp` / `*.part` (any case),
/// not `DICOMDIR` (a media directory, not an image).
pub fn is_candidate(path: &Path) -> bool {
    // a name in a legacy code page (not UTF-8) is a candidate too (review #16)
    let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    !(name.starts_with('.')
        || lower.ends_with(".tmp")
        || lower.ends_with(".part")
        || lower == "dicomdir")
}

/// Every candidate file under `dirs` (recursively; dot-folders are not entered, symbolic links
/// neither listed nor followed), in name order.
/// A folder that cannot be read is logged and skipped, so one bad mount does not stop the others.
pub fn scan(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        match crate::ingest::files::files_under_with(d, crate::ingest::files::Links::Skip) {
            Ok(files) => out.extend(files.into_iter().filter(|p| {
                is_candidate(p)
                    && !p
                        .strip_prefix(d)
                        .unwrap_or(p)
                        .components()
                        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
            })),
            Err(e) => log::warn!("watch.dirs {}: cannot scan: {e}", d.display()),
        }
    }
    out
}

/// inotify watches on `watch.dirs` (recursive); candidate paths of files closed after writing or
/// moved in arrive on the receiver given by [`FsEvents::start`]. Dropping it stops watching.
pub struct FsEvents {
    _watcher: RecommendedWatcher,
}

impl FsEvents {
    /// Watch `dirs` recursively. Errors: `Init`, `Watch` (names the folder).
    pub fn start(
        dirs: &[PathBuf],
    ) -> Result<(FsEvents, mpsc::UnboundedReceiver<PathBuf>), WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = move |res: notify::Result<notify::Event>| {
            match res {
                Ok(ev) => {
                    let wanted = matches!(
                        ev.kind,
                        EventKind::Access(AccessKind::Close(AccessMode::Write))
                            | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                            | EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                    );
                    if wanted {
                        // with RenameMode::Both the destination is the last path
                        if let Some(p) = ev.paths.last() {
                            if is_candidate(p) {
                                let _ = tx.send(p.clone());
                            }
                        }
                    }
                }
                Err(e) => {
                    log::warn!("file-system watcher: {}", notify_kind(&e));
                    log::debug!("file-system watcher: {e}");
                }
            }
        };
        // links are not followed into other trees (review #6)
        let mut watcher = RecommendedWatcher::new(
            handler,
            notify::Config::default().with_follow_symlinks(false),
        )
        .map_err(WatchError::Init)?;
        check_dirs(dirs)?;
        for d in dirs {
            if let Err(e) = watcher.watch(d, RecursiveMode::Recursive) {
                // one unreadable sub-folder (lost+found) or the inotify watch limit must not
                // stop the appliance (review #4): watch folder by folder what can be watched;
                // the rescan finds files in the rest
                log::warn!(
                    "a watched folder cannot be watched as a whole ({e}); watching its \
                     sub-folders one by one, the rescan covers the others"
                );
                let _ = watcher.unwatch(d);
                let (mut watched, mut refused) = (0usize, 0usize);
                for f in folders_under(d) {
                    match watcher.watch(&f, RecursiveMode::NonRecursive) {
                        Ok(()) => watched += 1,
                        Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                            log::warn!(
                                "inotify watch limit reached after {watched} folders \
                                 (fs.inotify.max_user_watches): the rest is found by the rescan"
                            );
                            break;
                        }
                        Err(e) => {
                            refused += 1;
                            log::debug!("{}: not watched: {e}", f.display());
                        }
                    }
                }
                if watched == 0 {
                    return Err(WatchError::Watch {
                        path: d.clone(),
                        source: e,
                    });
                }
                log::warn!("{watched} folder(s) watched one by one, {refused} refused");
            }
        }
        Ok((FsEvents { _watcher: watcher }, rx))
    }
}

/// Size (bytes) and modification time of a file as last seen.
type Seen = (u64, Option<SystemTime>);

/// The write-stability rule: [`Stability::observe`] registers a path (event or rescan),
/// [`Stability::observe_closed`] one with a completion event; [`Stability::ready`] returns the
/// paths whose size and mtime have not changed for `stable` since they were last seen to change,
/// and at once those closed (or moved in) and unchanged since. A path handed on once is not
/// handed on again until its size or mtime change, or until [`Stability::forget`] (a retry).
#[derive(Debug)]
pub struct Stability {
    stable: Duration,
    /// Candidates: what was seen, since when it is unchanged, and whether a completion event
    /// came for what was seen.
    pending: HashMap<PathBuf, (Seen, Instant, bool)>,
    /// Handed on, with what they were when handed on.
    handed: HashMap<PathBuf, Seen>,
}

/// Size and mtime of a regular file; `None` for anything else, a symbolic link included (never
/// followed: it could lead out of the watched tree, review #6).
fn stat(path: &Path) -> Option<Seen> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.is_file().then(|| (m.len(), m.modified().ok()))
}

impl Stability {
    /// `stable` = `watch.stable_secs`.
    pub fn new(stable: Duration) -> Stability {
        Stability {
            stable,
            pending: HashMap::new(),
            handed: HashMap::new(),
        }
    }

    /// Note a path seen by an event or a rescan (ignored when not a candidate, gone, or already
    /// handed on unchanged).
    pub fn observe(&mut self, path: PathBuf, now: Instant) {
        self.note(path, now, false);
    }

    /// Note a path with a completion event (closed after writing, or moved in): handed on by
    /// the next [`Stability::ready`] unless its size or mtime change before.
    pub fn observe_closed(&mut self, path: PathBuf, now: Instant) {
        self.note(path, now, true);
    }

    fn note(&mut self, path: PathBuf, now: Instant, closed: bool) {
        if !is_candidate(&path) {
            return;
        }
        let Some(seen) = stat(&path) else { return };
        if self.handed.get(&path) == Some(&seen) {
            return;
        }
        match self.pending.get_mut(&path) {
            Some((old, since, was_closed)) => {
                if *old != seen {
                    *old = seen;
                    *since = now;
                    *was_closed = closed;
                } else {
                    *was_closed |= closed;
                }
            }
            None => {
                self.pending.insert(path, (seen, now, closed));
            }
        }
    }

    /// Paths now stable (oldest first), removed from the candidates. A path whose size or mtime
    /// changed since it was observed starts its wait again; a vanished one is dropped.
    pub fn ready(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut out: Vec<(Instant, PathBuf)> = Vec::new();
        let mut gone = Vec::new();
        for (path, (seen, since, closed)) in self.pending.iter_mut() {
            match stat(path) {
                None => gone.push(path.clone()),
                Some(now_seen) if now_seen != *seen => {
                    // written again after its event: the timer decides until the next one
                    *seen = now_seen;
                    *since = now;
                    *closed = false;
                }
                Some(_) if *closed || now.duration_since(*since) >= self.stable => {
                    out.push((*since, path.clone()));
                }
                Some(_) => {}
            }
        }
        for p in gone {
            self.pending.remove(&p);
        }
        out.sort();
        out.into_iter()
            .map(|(_, p)| {
                if let Some((seen, _, _)) = self.pending.remove(&p) {
                    self.handed.insert(p.clone(), seen);
                }
                p
            })
            .collect()
    }

    /// Let `path` be handed on again once stable (after a time-out put it back for a retry, or
    /// after it was moved away).
    pub fn forget(&mut self, path: &Path) {
        self.handed.remove(path);
    }

    /// Change the stable time (`watch.stable_secs` reloaded); candidates keep their start.
    pub fn set_stable(&mut self, stable: Duration) {
        self.stable = stable;
    }

    /// Number of paths waiting to become stable.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_dot_files_and_dicomdir_are_ignored() {
        for name in [
            "a.tmp",
            "A.TMP",
            "b.dcm.part",
            ".x.dcm",
            "DICOMDIR",
            "dicomdir",
        ] {
            assert!(!is_candidate(Path::new(name)), "{name}");
        }
        for name in ["a.dcm", "IM0001", "x.tmp.dcm"] {
            assert!(is_candidate(Path::new(name)), "{name}");
        }
    }

    /// Review #6 (issue 13): links are not followed by the rescan: two links to the folder
    /// itself made the walk exponential (the rescan never ended), and a link out of the tree
    /// made the daemon read and move another application's files. The walk returns at once
    /// and lists each real file once; a linked file or folder is not listed; a symlink is never
    /// handed on by the stability rule.
    #[test]
    fn the_rescan_does_not_follow_links_in_or_out_of_the_tree() {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("mammo-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (watched, outside) = (root.join("export"), root.join("outside"));
        std::fs::create_dir_all(watched.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(watched.join("sub/x.dcm"), b"x").unwrap();
        std::fs::write(outside.join("y.dcm"), b"y").unwrap();
        symlink(".", watched.join("sub/a")).unwrap();
        symlink(".", watched.join("sub/b")).unwrap();
        symlink(&outside, watched.join("ext")).unwrap();
        symlink(outside.join("y.dcm"), watched.join("z.dcm")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = watched.clone();
        std::thread::spawn(move || tx.send(scan(&[w])).unwrap());
        let found = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the rescan must return within 2 s");
        assert_eq!(found, vec![watched.join("sub/x.dcm")]);
        let mut s = Stability::new(Duration::ZERO);
        let t0 = Instant::now();
        s.observe(watched.join("z.dcm"), t0);
        assert!(s.ready(t0 + Duration::from_secs(1)).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_file_is_ready_once_unchanged_for_the_stable_time_and_only_once() {
        let dir = std::env::temp_dir().join(format!("mammo-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.dcm");
        std::fs::write(&f, b"12345").unwrap();
        let mut s = Stability::new(Duration::from_secs(2));
        let t0 = Instant::now();
        s.observe(f.clone(), t0);
        assert!(s.ready(t0 + Duration::from_secs(1)).is_empty());
        // grows: the wait starts again at the time the change is seen
        std::fs::write(&f, b"1234567").unwrap();
        assert!(s.ready(t0 + Duration::from_secs(2)).is_empty());
        assert!(s.ready(t0 + Duration::from_millis(3900)).is_empty());
        assert_eq!(s.ready(t0 + Duration::from_secs(4)), vec![f.clone()]);
        // seen again unchanged: not handed on twice; after forget it is
        s.observe(f.clone(), t0 + Duration::from_secs(5));
        assert_eq!(s.pending(), 0);
        s.forget(&f);
        s.observe(f.clone(), t0 + Duration::from_secs(5));
        assert_eq!(s.ready(t0 + Duration::from_secs(7)), vec![f.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_closed_file_is_ready_at_once_unless_written_again() {
        let dir = std::env::temp_dir().join(format!("mammo-closed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.dcm");
        std::fs::write(&f, b"1234").unwrap();
        let mut s = Stability::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // seen by the rescan first: the timer; then its close-write event: at once
        s.observe(f.clone(), t0);
        assert!(s.ready(t0).is_empty());
        s.observe_closed(f.clone(), t0);
        assert_eq!(s.ready(t0), vec![f.clone()]);
        assert_eq!(s.pending(), 0);
        // the event of an unchanged file handed on already: not again
        s.observe_closed(f.clone(), t0);
        assert_eq!(s.pending(), 0);
        // written again after its event (a writer that reopens): the timer decides again …
        std::fs::write(&f, b"123456").unwrap();
        s.observe_closed(f.clone(), t0);
        std::fs::write(&f, b"12345678").unwrap();
        assert!(s.ready(t0 + Duration::from_secs(1)).is_empty());
        assert!(s.ready(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(s.ready(t0 + Duration::from_secs(61)), vec![f.clone()]);
        // … until its next close
        std::fs::write(&f, b"1234567890").unwrap();
        s.observe_closed(f.clone(), t0 + Duration::from_secs(62));
        assert_eq!(s.ready(t0 + Duration::from_secs(62)), vec![f.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
