//! When the agent is PID 1 (a container started without an init), it forks:
//! the child is the agent, the parent a minimal init that forwards signals to
//! it and reaps every orphan re-parented to PID 1 (Chromium's helpers).
//!
//! Why a separate process instead of a SIGCHLD handler in the agent: a
//! `waitpid(-1)` there would steal the exit statuses that std/tokio process
//! handles wait for (chromedriver's). The init owns only its one child, so it
//! can reap anything. `VANTAGE_NO_INIT=1` turns this off (when the container
//! runtime already provides an init, e.g. `--init` or tini).

/// Signals forwarded to the agent.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// `None`: carry on as the agent (not PID 1, or this is the forked child).
/// `Some(code)`: this process was the init and the agent has exited with `code`.
/// Must run before any thread is started.
pub fn run_as_init_if_pid1() -> Option<i32> {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1
        || std::env::var_os("VANTAGE_NO_INIT").is_some_and(|v| v == "1")
    {
        return None;
    }
    // SAFETY: plain libc calls on locally owned signal sets, single-threaded
    // (before the Tokio runtime exists), as fork requires.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let child = libc::fork();
        if child < 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            eprintln!(
                "warning: running as PID 1 but fork failed; orphaned processes will not be reaped"
            );
            return None;
        }
        if child == 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return None;
        }
        loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(child, sig);
                continue;
            }
            let mut agent_status = None;
            loop {
                let mut st: libc::c_int = 0;
                let pid = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    agent_status = Some(st);
                }
            }
            if let Some(st) = agent_status {
                return Some(exit_code(st));
            }
        }
    }
}

/// The init's exit code for the agent's wait status, as a shell reports it:
/// the agent's own code, or 128 + the signal that killed it.
fn exit_code(st: libc::c_int) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// The raw wait status of a real `sh -c script`.
    fn status_of(script: &str) -> libc::c_int {
        Command::new("sh").arg("-c").arg(script).status().expect("sh runs").into_raw()
    }

    #[test]
    fn exit_code_is_the_agents_code_or_128_plus_its_signal() {
        assert_eq!(exit_code(status_of("exit 0")), 0);
        assert_eq!(exit_code(status_of("exit 3")), 3);
        assert_eq!(exit_code(status_of("kill -TERM $$")), 128 + 15);
        assert_eq!(exit_code(status_of("kill -KILL $$")), 128 + 9);
        // A stopped status (not an exit) is a failure, never success.
        assert_eq!(exit_code(0x137f), 1);
    }

    #[test]
    fn forwards_the_stop_and_reload_signals() {
        assert_eq!(FORWARDED, [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2]);
        assert!(!FORWARDED.contains(&libc::SIGCHLD), "SIGCHLD is the init's own: it reaps");
    }

    #[test]
    fn is_the_agent_when_not_pid_1() {
        assert_ne!(std::process::id(), 1, "the test itself must not run as PID 1");
        assert_eq!(run_as_init_if_pid1(), None);
    }
}
