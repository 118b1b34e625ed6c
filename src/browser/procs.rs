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
                .map(|c| {
                    c.split(|b| *b == 0)
                        .any(|a| a.windows(needle.len()).any(|w| w == needle.as_bytes()))
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat
        .rfind(')')
        .ok_or_else(|| std::io::Error::other("odd /proc stat"))?
        + 2..];
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
