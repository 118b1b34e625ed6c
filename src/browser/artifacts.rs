//! The bounded artifact directory: failure screenshots and their notes
//! (URL, title, console errors), rotated by file count and total size.

use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug)]
pub struct Artifacts {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    lock: Mutex<()>,
}

/// Names this directory's own files: `<unix-ms>-<journey>-<step>[-<what>].<png|txt>`.
const OURS: &[&str] = &["png", "txt"];

impl Artifacts {
    pub fn new(dir: PathBuf, max_files: usize, max_bytes: u64) -> Artifacts {
        Artifacts {
            dir,
            max_files: max_files.max(1),
            max_bytes,
            lock: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `files` (extension, bytes) under one stem and rotates. Returns the first file's path.
    pub fn save(
        &self,
        journey: &str,
        step: &str,
        what: &str,
        files: &[(&str, &[u8])],
    ) -> io::Result<PathBuf> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        private_dir(&self.dir)?;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let what = if what.is_empty() {
            String::new()
        } else {
            format!("-{}", clean(what))
        };
        let stem = format!("{ms}-{}-{}{what}", clean(journey), clean(step));
        let mut first = None;
        for (ext, bytes) in files {
            let path = self.dir.join(format!("{stem}.{ext}"));
            // Screenshots and notes may show private data: 0600, and never through a planted file or link.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(O_NOFOLLOW)
                .open(&path)?;
            f.write_all(bytes)?;
            first.get_or_insert(path);
        }
        self.rotate(first.as_deref());
        first.ok_or_else(|| io::Error::other("nothing to save"))
    }

    /// The failure screenshot `step` of `journey` saved in run `run_id`, if it is still kept.
    /// Matches by the file-name pattern and the `run:` line of the notes beside it.
    pub fn find_failure(&self, journey: &str, step: &str, run_id: &str) -> Option<PathBuf> {
        let suffix = format!("-{}-{}-failure.txt", clean(journey), clean(step));
        let want = format!("\nrun: {run_id}\n");
        std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                if !name.ends_with(&suffix) || !name.starts_with(|c: char| c.is_ascii_digit()) {
                    return None;
                }
                let notes = read_head(&e.path(), 4096)?;
                let png = e.path().with_extension("png");
                (notes.contains(&want) && png.is_file()).then_some(png)
            })
    }

    /// Removes the oldest of our files until both limits hold (never `keep`).
    fn rotate(&self, keep: Option<&Path>) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let p = e.path();
                let ext = p.extension()?.to_str()?;
                let name = p.file_name()?.to_str()?;
                if !OURS.contains(&ext) || !name.starts_with(|c: char| c.is_ascii_digit()) {
                    return None;
                }
                let m = e.metadata().ok().filter(|m| m.is_file())?;
                Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
        let mut count = files.len();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, p) in files {
            if count <= self.max_files && total <= self.max_bytes {
                break;
            }
            if Some(p.as_path()) == keep || keep.is_some_and(|k| k.file_stem() == p.file_stem()) {
                continue;
            }
            if std::fs::remove_file(&p).is_ok() {
                count -= 1;
                total = total.saturating_sub(len);
            }
        }
    }
}

const O_NOFOLLOW: i32 = 0o400000;

/// The default directory when none is configured: systemd's `StateDirectory`
/// when there is one, else a per-user directory under the temp dir (checked
/// like any other by [`private_dir`], so one planted by someone else is refused).
pub fn default_dir() -> PathBuf {
    if let Some(d) =
        std::env::var_os("STATE_DIRECTORY").and_then(|v| std::env::split_paths(&v).next())
    {
        return d.join("artifacts");
    }
    std::env::temp_dir().join(format!("vantage-artifacts-{}", euid()))
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Creates `dir` 0700, or accepts it when it is a real directory (not a link)
/// owned by the agent's user and closed to everyone else; anything else is refused.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::other(format!("artifacts directory {} is not a directory (a link?): refusing to write screenshots there", dir.display())));
    }
    if m.uid() != euid() {
        return Err(io::Error::other(format!(
            "artifacts directory {} belongs to uid {}, not to the agent (uid {}): refusing to write screenshots there; remove it or set `artifacts_dir`",
            dir.display(),
            m.uid(),
            euid()
        )));
    }
    if m.permissions().mode() & 0o077 != 0 {
        // Ours: close it rather than fail.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn read_head(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A file-name-safe version of a journey or step name.
fn clean(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    out.trim_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_newest_within_count_and_size() {
        let dir = std::env::temp_dir().join(format!(
            "vantage-artifacts-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let a = Artifacts::new(dir.clone(), 3, 1000);
        let mut last = PathBuf::new();
        for i in 0..5 {
            last = a
                .save("j", &format!("s{i}"), "", &[("png", &[0u8; 100])])
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(last.exists());
        // A single file above the size limit is still kept: it is the newest.
        let big = a.save("j", "big", "", &[("png", &[0u8; 2000])]).unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![big]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failure_screenshots_are_found_by_run_id() {
        let dir = std::env::temp_dir().join(format!(
            "vantage-artifacts-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let a = Artifacts::new(dir.clone(), 10, 1 << 20);
        let notes =
            |run: &str| format!("journey: shop/checkout\nstep: pay now\nrun: {run}\nurl: x\n");
        let first = a
            .save(
                "shop/checkout",
                "pay now",
                "failure",
                &[("png", b"one"), ("txt", notes("aaa").as_bytes())],
            )
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = a
            .save(
                "shop/checkout",
                "pay now",
                "failure",
                &[("png", b"two"), ("txt", notes("bbb").as_bytes())],
            )
            .unwrap();
        assert_eq!(
            a.find_failure("shop/checkout", "pay now", "aaa"),
            Some(first)
        );
        assert_eq!(
            a.find_failure("shop/checkout", "pay now", "bbb"),
            Some(second)
        );
        assert_eq!(a.find_failure("shop/checkout", "pay now", "ccc"), None);
        assert_eq!(a.find_failure("shop/checkout", "other", "aaa"), None);
        // A prefix of a run id is not that run.
        assert_eq!(a.find_failure("shop/checkout", "pay now", "aa"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn directory_is_private_and_files_are_0600() {
        let dir = std::env::temp_dir().join(format!(
            "vantage-artifacts-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        let a = Artifacts::new(dir.clone(), 3, 1000);
        let p = a.save("j", "s", "", &[("txt", b"x")]).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // A link planted where the directory should be is refused.
        std::os::unix::fs::symlink("/tmp", &dir).unwrap();
        let e = Artifacts::new(dir.clone(), 3, 1000)
            .save("j", "s", "", &[("txt", b"x")])
            .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        std::fs::remove_file(&dir).unwrap();
    }
}
