//! Process housekeeping for chromedriver and Chromium: signalling a whole
//! process group, and finding descendants or stragglers through /proc.

use std::path::Path;

mod sys {
    // libc is linked into every Rust program on Linux; no crate needed for one call.
    extern "C" {
        pub fn kill(pid: i32, sig: i32) -> i32;
    }
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;

/// Sends `sig` to every process of group `pgid`. Ignores "no such process".
pub fn kill_group(pgid: u32, sig: i32) {
    if pgid > 1 {
        // SAFETY: plain syscall with integer arguments; a negative pid names the group.
        unsafe { sys::kill(-(pgid as i32), sig) };
    }
}

pub fn kill_pid(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: plain syscall with integer arguments.
        unsafe { sys::kill(pid as i32, sig) };
    }
}

/// `(pid, ppid, state)` of every process, from /proc/PID/stat.
pub fn table() -> Vec<(u32, u32, char)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, ppid) = state_and_ppid(&stat)?;
        Some((pid, ppid, state))
    })
    .collect()
}

/// Fields of a /proc/PID/stat line after the command name, from field 3 (state) on.
fn after_name(stat: &str) -> Option<&str> {
    // The command name may contain spaces and parentheses: fields start after the last `)`.
    stat.get(stat.rfind(')')? + 2..)
}

/// `(state, ppid)` from a /proc/PID/stat line.
fn state_and_ppid(stat: &str) -> Option<(char, u32)> {
    let mut f = after_name(stat)?.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid: u32 = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every live (non-zombie) descendant of `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let t = table();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid, state) in &t {
            if ppid == p && !out.contains(&pid) {
                frontier.push(pid);
                if state != 'Z' {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Processes with an argument equal to `needle` (e.g. a session's whole
/// `--user-data-dir=…` flag; a profile whose path extends another's is not a match).
pub fn with_arg(needle: &str) -> Vec<u32> {
    table()
        .into_iter()
        .filter(|&(_, _, state)| state != 'Z')
        .filter(|&(pid, _, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0).any(|a| a == needle.as_bytes())
                })
                .unwrap_or(false)
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Kills whatever still runs with this user data dir (a session chromedriver failed to close).
pub fn kill_profile_users(dir: &Path) {
    let needle = format!("--user-data-dir={}", dir.display());
    for pid in with_arg(&needle) {
        kill_pid(pid, SIGKILL);
    }
}

/// Overwrites `needle` in the argument area of process `pid` (ours, same
/// user) with `x`s, so `/proc/PID/cmdline`, which every local user can read,
/// no longer shows it. Only for values the process copied at startup
/// (chromedriver parses its flags once). True when something was overwritten.
pub fn scrub_arg(pid: u32, needle: &[u8]) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom, Write};
    if needle.is_empty() {
        return Ok(false);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = after_name(&stat).ok_or_else(|| std::io::Error::other("odd /proc stat"))?;
    // Fields after the name start at field 3; arg_start and arg_end are fields 48 and 49.
    let f: Vec<&str> = rest.split(' ').collect();
    let num = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("no argument area in /proc stat"))
    };
    let (start, end) = (num(48)?, num(49)?);
    if end <= start || end - start > 1 << 20 {
        return Err(std::io::Error::other("odd argument area"));
    }
    let mut mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; (end - start) as usize];
    mem.seek(SeekFrom::Start(start))?;
    mem.read_exact(&mut buf)?;
    let mut changed = false;
    let mut i = 0;
    while needle.len() <= buf.len() && i + needle.len() <= buf.len() {
        if &buf[i..i + needle.len()] == needle {
            mem.seek(SeekFrom::Start(start + i as u64))?;
            mem.write_all(&vec![b'x'; needle.len()])?;
            changed = true;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    Ok(changed)
}

/// 128 random bits from the kernel, as 32 hex digits.
pub fn random_hex128() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Proportional set size (kB) of a process, from /proc/PID/smaps_rollup.
pub fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A child in its own process group, killed (group and all) on drop.
    struct Group(Child);

    impl Group {
        /// `sh -c script` with stdin held open, so `read x` blocks until the test ends.
        fn sh(script: &str, args: &[&str]) -> Group {
            let c = Command::new("sh")
                .arg("-c")
                .arg(script)
                .args(args)
                .stdin(Stdio::piped())
                .process_group(0)
                .spawn()
                .expect("sh runs");
            Group(c)
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            // Already reaped: the pid may belong to someone else by now.
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            kill_group(self.0.id(), SIGKILL);
            let _ = self.0.wait();
        }
    }

    /// Polls `f` every 5 ms for at most 2 s.
    fn until(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(2), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn state(pid: u32) -> Option<char> {
        table().into_iter().find(|&(p, _, _)| p == pid).map(|(_, _, s)| s)
    }

    #[test]
    fn stat_fields_start_after_the_last_parenthesis_of_the_name() {
        assert_eq!(state_and_ppid("4242 (sleep) S 17 4242 4242 0 -1"), Some(('S', 17)));
        // A name with spaces and parentheses that look like fields.
        assert_eq!(state_and_ppid("4242 (a) R 1 (b) Z 99 4242 0"), Some(('Z', 99)));
        assert_eq!(after_name("1 (x) S 0 1"), Some("S 0 1"));
        // Truncated lines give nothing instead of a panic.
        assert_eq!(after_name("1 (x)"), None);
        assert_eq!(state_and_ppid("1 (x) S"), None);
        assert_eq!(state_and_ppid("no name here"), None);
    }

    #[test]
    fn table_lists_a_child_with_its_parent_and_state() {
        let g = Group::sh("read x", &[]);
        until("sh to block in read", || state(g.pid()) == Some('S'));
        let row = table().into_iter().find(|&(p, _, _)| p == g.pid());
        assert_eq!(row, Some((g.pid(), std::process::id(), 'S')));
    }

    #[test]
    fn descendants_reach_grandchildren_and_kill_group_stops_them_all() {
        let mut g = Group::sh("sleep 30 & read x", &[]);
        let mut kids = Vec::new();
        until("sleep to start", || {
            kids = descendants(g.pid());
            kids.len() == 1
        });
        let sleep = kids[0];
        assert_eq!(table().into_iter().find(|&(p, _, _)| p == sleep).map(|(_, pp, _)| pp), Some(g.pid()));
        assert!(descendants(std::process::id()).contains(&sleep), "grandchild of the test process");
        kill_group(g.pid(), SIGKILL);
        let st = g.0.wait().unwrap();
        assert_eq!(st.signal(), Some(SIGKILL));
        until("sleep to die with its group", || !matches!(state(sleep), Some(s) if s != 'Z'));
    }

    #[test]
    fn descendants_skip_zombies() {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        until("the child to become a zombie", || state(pid) == Some('Z'));
        assert!(!descendants(std::process::id()).contains(&pid));
        c.wait().unwrap();
    }

    #[test]
    fn kill_profile_users_kills_only_processes_with_that_profile() {
        let tag = random_hex128().unwrap();
        let dir = format!("/tmp/vantage-procs-unit-{tag}");
        let mut user = Group::sh("read x", &[&format!("--user-data-dir={dir}")]);
        let mut other = Group::sh("read x", &[&format!("--user-data-dir={dir}x")]);
        until("both to start", || state(user.pid()) == Some('S') && state(other.pid()) == Some('S'));
        // The whole flag must match: `{dir}x` extends `{dir}` but is another profile.
        assert_eq!(with_arg(&format!("--user-data-dir={dir}")), [user.pid()]);
        assert_eq!(with_arg(&format!("--user-data-dir={dir}x")), [other.pid()]);
        assert_eq!(with_arg("--user-data-dir=/tmp"), Vec::<u32>::new());
        kill_profile_users(Path::new(&dir));
        assert_eq!(user.0.wait().unwrap().signal(), Some(SIGKILL));
        assert_eq!(other.0.try_wait().unwrap(), None);
        kill_pid(other.pid(), SIGTERM);
        assert_eq!(other.0.wait().unwrap().signal(), Some(SIGTERM));
    }

    #[test]
    fn scrub_arg_hides_every_copy_of_the_value_from_the_command_line() {
        let secret = random_hex128().unwrap();
        let g = Group::sh("read x", &[&format!("--url-base=/{secret}"), &secret]);
        until("sh to start", || state(g.pid()) == Some('S'));
        let cmdline = || std::fs::read(format!("/proc/{}/cmdline", g.pid())).unwrap();
        assert!(String::from_utf8_lossy(&cmdline()).contains(&secret));
        assert!(scrub_arg(g.pid(), secret.as_bytes()).unwrap());
        let x = "x".repeat(32);
        assert_eq!(cmdline(), format!("sh\0-c\0read x\0--url-base=/{x}\0{x}\0").into_bytes());
        assert!(!scrub_arg(g.pid(), secret.as_bytes()).unwrap(), "nothing left to overwrite");
        assert_eq!(with_arg(&secret), Vec::<u32>::new());
    }

    #[test]
    fn scrub_arg_with_nothing_to_hide_changes_nothing() {
        assert!(!scrub_arg(std::process::id(), b"").unwrap());
    }

    #[test]
    fn scrub_arg_fails_for_a_process_that_does_not_exist() {
        let e = scrub_arg(i32::MAX as u32, b"abc").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn random_hex128_is_32_lowercase_hex_digits_and_differs_each_time() {
        let a = random_hex128().unwrap();
        let b = random_hex128().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn pss_kb_reads_smaps_rollup_and_is_zero_without_the_process() {
        let own = pss_kb(std::process::id());
        assert!(own > 100, "{own} kB");
        assert_eq!(pss_kb(i32::MAX as u32), 0);
    }
}
