//! `shoal_build_info` and the standard `process_*` families of the exposing process.
//!
//! The process figures are read from `/proc/self` at each scrape (Linux only; elsewhere, and
//! when `/proc` cannot be read, the families are left out rather than written as zeros). The
//! parsers take the files' text, so they are tested on fixed input.

use super::{Exposition, Labels};

/// `shoal_build_info{version, revision} 1`.
pub fn build_info(x: &mut Exposition) {
    let labels: Labels = vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("revision", crate::GIT_REVISION.to_string()),
    ];
    x.family(
        "shoal_build_info",
        "gauge",
        "Always 1; the labels say which build this process runs (crate version, git revision).",
        [(labels, 1.0)],
    );
}

/// What `/proc` says of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: Option<f64>,
    /// The soft limit; none when unlimited.
    pub max_fds: Option<f64>,
}

/// The fields of `/proc/self/stat` the families need, with the clock ticks per second and
/// the page size: CPU seconds (user + system), resident and virtual bytes, start time in
/// ticks since boot.
pub fn parse_stat(text: &str, ticks: f64, page: f64) -> Option<(f64, f64, f64, f64)> {
    // `pid (comm) state …`: the command may hold spaces and parentheses, the last `)` ends it.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3.. of proc(5): f[0] is `state` (field 3), so field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    let cpu = (num(14)? + num(15)?) / ticks;
    Some((cpu, num(24)? * page, num(23)?, num(22)?))
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the Unix epoch.
pub fn parse_btime(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft `Max open files` of `/proc/self/limits` (none when unlimited or absent).
pub fn parse_max_fds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads this process's figures; none where `/proc` cannot be read.
#[cfg(target_os = "linux")]
pub fn read() -> Option<ProcessStats> {
    // SAFETY: sysconf only reads a configuration value.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (cpu, rss, vsize, start_ticks) = parse_stat(&stat, ticks as f64, page as f64)?;
    let boot = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| parse_max_fds(&l));
    Some(ProcessStats {
        cpu_seconds: cpu,
        resident_bytes: rss,
        virtual_bytes: vsize,
        start_time_seconds: boot + start_ticks / ticks as f64,
        open_fds,
        max_fds,
    })
}

/// Not Linux: no `/proc` to read.
#[cfg(not(target_os = "linux"))]
pub fn read() -> Option<ProcessStats> {
    None
}

/// The `process_*` families of `p`.
pub fn families(x: &mut Exposition, p: &ProcessStats) {
    let one = |v: f64| [(Labels::new(), v)];
    x.family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        one(p.cpu_seconds),
    );
    x.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        one(p.resident_bytes),
    );
    x.family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        one(p.virtual_bytes),
    );
    x.family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        one(p.start_time_seconds),
    );
    x.family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds.map(|v| (Labels::new(), v)),
    );
    x.family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        p.max_fds.map(|v| (Labels::new(), v)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        // A command with a space and a parenthesis; utime 250, stime 50 ticks; start at 1000
        // ticks after boot; vsize 8 MiB; rss 300 pages.
        let stat = "4242 (shoal (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    9 0 1000 8388608 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let (cpu, rss, vsize, start) = parse_stat(stat, 100.0, 4096.0).unwrap();
        assert_eq!(
            (cpu, rss, vsize, start),
            (3.0, 300.0 * 4096.0, 8388608.0, 1000.0)
        );
        assert_eq!(parse_stat("garbage", 100.0, 4096.0), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1.7e9)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_back() {
        let p = read().expect("/proc is readable here");
        assert!(p.resident_bytes > 0.0 && p.cpu_seconds >= 0.0);
        assert!(p.open_fds.is_some_and(|n| n >= 1.0));
        assert!(p.start_time_seconds > 1.5e9);
    }
}
