//! Lock files, so that two workers sharing a library folder never make the same asset.
//!
//! A lock is a file created with `create_new` (atomic on local and NFS v3+ file systems): the
//! worker that creates it owns the asset until it removes it. While it works, a heartbeat
//! thread touches the file. A lock left behind by a worker that died is taken over when its
//! holder is this same worker id (a requeued Slurm task or a restarted Kubernetes pod), a
//! process on this host that no longer runs, or its heartbeat is older than `stale_after`.
//! Taking over a stale lock is best-effort (two workers judging the same lock stale at the
//! same instant could both take it); the normal path never races.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Who is working: the id the scripts give (`slurm-<job>-<task>`, `k8s-<job>-<index>`), else
/// `<host>:<pid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub worker: String,
    pub host: String,
    pub pid: u32,
}

impl Worker {
    /// This process, under `id` or, without one, `<host>:<pid>`.
    pub fn this_process(id: Option<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        Self {
            worker: id.unwrap_or_else(|| format!("{host}:{pid}")),
            host,
            pid,
        }
    }

    /// Whether this worker's process is known to have ended (same host, no such process).
    fn is_gone(&self, me: &Worker) -> bool {
        self.host == me.host && self.pid != me.pid && !process_runs(self.pid)
    }
}

/// Whether a process runs on this host; assumed running where the OS cannot tell.
fn process_runs(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// A held lock; dropping it stops the heartbeat and removes the file if it is still ours.
pub struct Lock {
    path: PathBuf,
    me: Worker,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

/// The outcome of trying to take a lock.
pub enum Taken {
    Held(Lock),
    /// Another live worker holds it.
    Busy(Worker),
}

/// Tries to take the lock file `path` for `me`.
pub fn try_lock(path: &Path, me: &Worker, stale_after: Duration) -> Result<Taken> {
    // Two rounds: a stale lock is removed in the first, created in the second.
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut file) => {
                file.write_all(serde_json::to_string(me)?.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("writing the lock {}", path.display()))?;
                return Ok(Taken::Held(Lock::start(path, me.clone(), stale_after)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = read_holder(path);
                let age = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                let stale = match &holder {
                    Some(h) => h.worker == me.worker || h.is_gone(me) || age > stale_after,
                    // Unreadable: a holder that died while writing it, or one that is writing
                    // it this instant; wait a moment's worth before calling it stale.
                    None => age > Duration::from_secs(5).min(stale_after),
                };
                if !stale {
                    return Ok(Taken::Busy(holder.unwrap_or_else(|| Worker {
                        worker: "(being written)".into(),
                        host: String::new(),
                        pid: 0,
                    })));
                }
                if let Some(h) = &holder {
                    log::info!(
                        "taking over {} from {} (its worker is gone or silent for {}s)",
                        path.display(),
                        h.worker,
                        age.as_secs()
                    );
                }
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    Ok(Taken::Busy(read_holder(path).unwrap_or_else(|| me.clone())))
}

/// Waits for the lock (the library index's: held for moments only).
pub fn lock_waiting(path: &Path, me: &Worker, stale_after: Duration) -> Result<Lock> {
    let start = std::time::Instant::now();
    loop {
        if let Taken::Held(lock) = try_lock(path, me, stale_after)? {
            return Ok(lock);
        }
        if start.elapsed() > stale_after * 2 {
            anyhow::bail!("{} stayed locked for {:?}", path.display(), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_holder(path: &Path) -> Option<Worker> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

impl Lock {
    fn start(path: &Path, me: Worker, stale_after: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        // Touch well within the stale time, so a live worker is never taken for a dead one.
        let every = (stale_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let heartbeat = {
            let (stop, path) = (stop.clone(), path.to_path_buf());
            std::thread::spawn(move || {
                let mut since = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if since.elapsed() >= every {
                        since = std::time::Instant::now();
                        if let Ok(file) = OpenOptions::new().append(true).open(&path) {
                            file.set_modified(SystemTime::now()).ok();
                        }
                    }
                }
            })
        };
        Self {
            path: path.to_path_buf(),
            me,
            stop,
            heartbeat: Some(heartbeat),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            h.join().ok();
        }
        // A lock taken over from us (we were silent too long) is no longer ours to remove.
        if read_holder(&self.path).as_ref() == Some(&self.me) {
            std::fs::remove_file(&self.path).ok();
        }
    }
}

/// Seconds since the Unix epoch, for records.
pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rewardsds-lock-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn other(worker: &str, pid: u32) -> Worker {
        Worker {
            worker: worker.into(),
            ..Worker::this_process(None)
        }
        .with_pid(pid)
    }

    impl Worker {
        fn with_pid(mut self, pid: u32) -> Self {
            self.pid = pid;
            self
        }
    }

    #[test]
    fn a_live_holder_keeps_its_lock_and_release_frees_it() {
        let d = dir("live");
        let path = d.join("a.lock");
        let minute = Duration::from_secs(60);
        let me = Worker::this_process(Some("one".into()));
        let Taken::Held(lock) = try_lock(&path, &me, minute).unwrap() else {
            panic!("free lock not taken")
        };
        // Another worker in this same (live) process: busy, named.
        let them = Worker::this_process(Some("two".into()));
        match try_lock(&path, &them, minute).unwrap() {
            Taken::Busy(holder) => assert_eq!(holder.worker, "one"),
            Taken::Held(_) => panic!("two workers hold one lock"),
        }
        drop(lock);
        assert!(!path.exists());
        assert!(matches!(
            try_lock(&path, &them, minute).unwrap(),
            Taken::Held(_)
        ));
    }

    #[test]
    fn dead_silent_or_requeued_holders_are_taken_over() {
        let d = dir("stale");
        let minute = Duration::from_secs(60);
        let me = Worker::this_process(Some("me".into()));

        // A process on this host that has ended (a child we waited for).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let path = d.join("dead.lock");
        std::fs::write(&path, serde_json::to_string(&other("gone", dead)).unwrap()).unwrap();
        assert!(matches!(
            try_lock(&path, &me, minute).unwrap(),
            Taken::Held(_)
        ));

        // The same worker id, requeued: its own lock.
        let path = d.join("requeued.lock");
        std::fs::write(&path, serde_json::to_string(&other("me", 1)).unwrap()).unwrap();
        assert!(matches!(
            try_lock(&path, &me, minute).unwrap(),
            Taken::Held(_)
        ));

        // Another host's worker whose heartbeat stopped.
        let path = d.join("silent.lock");
        let far = Worker {
            worker: "far".into(),
            host: "elsewhere".into(),
            pid: 1,
        };
        std::fs::write(&path, serde_json::to_string(&far).unwrap()).unwrap();
        let short = Duration::from_millis(200);
        assert!(matches!(
            try_lock(&path, &me, short).unwrap(),
            Taken::Busy(_)
        ));
        std::thread::sleep(Duration::from_millis(300));
        let Taken::Held(lock) = try_lock(&path, &me, short).unwrap() else {
            panic!("a silent lock was not taken over")
        };
        // Our heartbeat keeps ours fresh past the stale time.
        std::thread::sleep(Duration::from_millis(500));
        let them = Worker {
            worker: "them".into(),
            host: "elsewhere".into(),
            pid: 2,
        };
        assert!(matches!(
            try_lock(&path, &them, short).unwrap(),
            Taken::Busy(_)
        ));
        drop(lock);
    }
}
