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
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields start after the last `)`.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut f = rest.split(' ');
        let state = f.next()?.chars().next()?;
        let ppid: u32 = f.next()?.parse().ok()?;
        Some((pid, ppid, state))
    })
    .collect()
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

/// Processes whose command line contains `needle` (e.g. a session's `--user-data-dir=`).
pub fn with_arg(needle: &str) -> Vec<u32> {
    table()
        .into_iter()
        .filter(|&(_, _, state)| state != 'Z')
        .filter(|&(pid, _, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a.windows(needle.len()).any(|w| w == needle.as_bytes())))
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

/// Proportional set size (kB) of a process, from /proc/PID/smaps_rollup.
pub fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}
