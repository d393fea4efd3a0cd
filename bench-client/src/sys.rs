//! The few operating-system facts the client reads or sets: the open-file
//! limit and a process's resident set size.

use std::time::Duration;

use anyhow::{bail, Context};

/// File descriptors kept free for the executor, stdio and the like.
pub const SPARE_FDS: u64 = 64;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and returns it.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; lowering nothing, raising soft to hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// Refuses a run that cannot open `needed` sockets under `limit`.
pub fn check_fd_budget(needed: u64, limit: u64) -> anyhow::Result<()> {
    if needed + SPARE_FDS > limit {
        bail!(
            "this run needs {needed} sockets plus {SPARE_FDS} spare descriptors, \
             but RLIMIT_NOFILE is {limit} (hard limit); use fewer connections"
        );
    }
    Ok(())
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `VmRSS` of a process in bytes (`None` = this process).
pub fn rss_bytes(pid: Option<u32>) -> anyhow::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS line in {path}"))
}

/// Extracts `VmRSS:   1234 kB` as bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next()? {
        "kB" => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tgateway\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(s), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_bytes(None).unwrap() > 0);
    }

    #[test]
    fn cpu_time_advances() {
        // Burn CPU (black_box keeps the optimiser from folding the loop)
        // until the clock moves, for at most 2 s of wall time.
        let before = cpu_time();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut x = 0u64;
        while cpu_time() <= before && std::time::Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = x.wrapping_add(std::hint::black_box(i) * i);
            }
        }
        std::hint::black_box(x);
        assert!(cpu_time() > before, "process CPU time did not advance");
    }

    #[test]
    fn fd_budget() {
        assert!(check_fd_budget(19_000, 20_000).is_ok());
        assert!(check_fd_budget(19_990, 20_000).is_err());
    }
}
