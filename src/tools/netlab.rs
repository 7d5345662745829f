//! A small lab of hosts: one network namespace per host, each with a veth into a bridge that
//! lives in a namespace of its own, on a private /24 (`10.77.<subnet>.0/24`, host `i` at
//! `.<i + 2>`). Nothing touches the root namespace's links, so parallel labs (other threads,
//! other runs) never collide: names carry the test process's id and a counter.
//!
//! Used by the namespace tests and by `shoal bench lb`. Needs root and `ip netns`
//! ([`unavailable`] says why not).
//!
//! Processes are the real `shoal` binary run with `ip netns exec HOST …`, their stdout and
//! stderr in files of the lab's directory. Dropping the lab SIGKILLs every process it started
//! and every process left in its namespaces (children the hub spawned, too), then deletes the
//! namespaces — also when the test failed, after printing the end of every log.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Prefix of every namespace a lab creates: `snt<pid>-<n>-<host>`.
const PREFIX: &str = "snt";

/// A process the lab started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc(usize);

pub struct Lab {
    /// `snt<pid>-<n>`.
    name: String,
    subnet: u8,
    bridge: String,
    hosts: Vec<String>,
    procs: Vec<(String, Child)>,
    dir: tempfile::TempDir,
    /// The `shoal` binary the lab runs.
    program: std::path::PathBuf,
}

/// Runs a command to completion; its stderr in the error.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(drop)
}

/// Why this machine cannot host a lab, if it cannot: not root, or no `ip netns`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need root)".into());
    }
    run("ip", &["netns", "list"])
        .err()
        .map(|e| format!("`ip netns` does not work here: {e}"))
}

/// SIGKILLs every process in a namespace (the lab's own namespaces only).
fn kill_all_in(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill only sends a signal; the pid is a process inside our namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Deletes the namespaces of labs whose test process is gone (a run killed before its drop).
fn remove_stale_labs() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Lab {
    /// Creates the bridge and one namespace per host; host `i` gets `10.77.<subnet>.<i + 2>`.
    pub fn new(subnet: u8, hosts: &[&str], program: &Path) -> Result<Lab, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        remove_stale_labs();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("shoal-netns-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let mut lab = Lab {
            bridge: format!("{name}-br"),
            name,
            subnet,
            hosts: Vec::new(),
            procs: Vec::new(),
            dir,
            program: program.to_path_buf(),
        };
        // On an error below, the drop removes what was made.
        let br = lab.bridge.clone();
        ip(&["netns", "add", &br])?;
        lab.hosts.push(br.clone());
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (i, host) in hosts.iter().enumerate() {
            let ns = lab.ns(host);
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(ns.clone());
            // Both ends are created where they live: no name ever exists in the root
            // namespace.
            let port = format!("p{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", lab.addr_of(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    fn addr_of(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2 + index as u8)
    }

    /// The address of a host.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        let ns = self.ns(host);
        let i = self
            .hosts
            .iter()
            .skip(1)
            .position(|h| *h == ns)
            .unwrap_or_else(|| panic!("no host {host} in the lab"));
        self.addr_of(i)
    }

    pub fn addr(&self, host: &str, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(host), port))
    }

    /// The `shoal` binary the lab runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The lab's directory (configs, certificates, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `shoal ARGS` in a host; stdout goes to `<name>.out`, stderr to `<name>.log`.
    pub fn spawn(&mut self, host: &str, name: &str, args: &[String]) -> Proc {
        let program = self.program.clone();
        self.spawn_program(host, name, &program, args)
    }

    /// [`Lab::spawn`] for another program (a balancer such as nginx, in the foreground).
    pub fn spawn_program(
        &mut self,
        host: &str,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let file = |ext: &str| {
            std::fs::File::create(self.dir().join(format!("{name}.{ext}")))
                .unwrap_or_else(|e| panic!("log file of {name}: {e}"))
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("log"));
        // SAFETY: prctl only sets this child's parent-death signal; it allocates nothing.
        // `ip netns exec` execs the program in place, so the signal covers shoal itself and
        // a test process that dies without its drop takes its processes along.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push((name.to_string(), child));
        Proc(self.procs.len() - 1)
    }

    /// Runs `args` (a command and its arguments) in a host, to completion.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let ns = self.ns(host);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Makes `balancer` the router in front of `backends` for `clients`: it owns `vip` and
    /// forwards without ICMP redirects, and the backends send to the clients through it (so
    /// their answers pass the balancer's rewrite).
    pub fn route_through(
        &self,
        balancer: &str,
        vip: Ipv4Addr,
        backends: &[&str],
        clients: &str,
    ) -> Result<(), String> {
        self.exec(
            balancer,
            &["ip", "addr", "add", &format!("{vip}/32"), "dev", "eth0"],
        )?;
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            self.exec(balancer, &["sysctl", "-qw", key])?;
        }
        for host in backends {
            self.route_via(host, &[clients], balancer, true)?;
            for key in [
                "net.ipv4.conf.all.accept_redirects=0",
                "net.ipv4.conf.eth0.accept_redirects=0",
            ] {
                self.exec(host, &["sysctl", "-qw", key])?;
            }
        }
        Ok(())
    }

    /// Sends what `host` sends to the hosts `dests` through `router` (`on`), or straight
    /// over the bridge again (`!on`): a control path with the balancer's host as a plain
    /// router, the same hops as through the balancer without its rules.
    pub fn route_via(
        &self,
        host: &str,
        dests: &[&str],
        router: &str,
        on: bool,
    ) -> Result<(), String> {
        let via = self.ip(router).to_string();
        for d in dests {
            let to = format!("{}/32", self.ip(d));
            if on {
                self.exec(host, &["ip", "route", "replace", &to, "via", &via])?;
            } else {
                // Absent already is fine.
                let _ = self.exec(host, &["ip", "route", "del", &to]);
            }
        }
        Ok(())
    }

    /// The process id (`ip netns exec` became shoal, so it is shoal's).
    pub fn pid(&self, p: Proc) -> u32 {
        self.procs[p.0].1.id()
    }

    /// Sends a signal.
    pub fn signal(&self, p: Proc, sig: i32) {
        // SAFETY: kill only sends a signal to a child this lab started and has not reaped
        // (a reaped child's id is never signalled: `wait` below runs after the kill).
        let rc = unsafe { libc::kill(self.pid(p) as i32, sig) };
        assert_eq!(rc, 0, "signal {sig} to {}", self.procs[p.0].0);
    }

    /// SIGKILLs a process and reaps it.
    pub fn kill(&mut self, p: Proc) {
        self.signal(p, libc::SIGKILL);
        let _ = self.procs[p.0].1.wait();
    }

    /// Its exit status once it ended, waiting at most `within`.
    pub fn wait(&mut self, p: Proc, within: Duration) -> Option<ExitStatus> {
        let deadline = crate::clock::now() + within;
        loop {
            if let Ok(Some(s)) = self.procs[p.0].1.try_wait() {
                return Some(s);
            }
            if crate::clock::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self, p: Proc) -> bool {
        matches!(self.procs[p.0].1.try_wait(), Ok(None))
    }

    /// Its stdout so far.
    pub fn stdout(&self, p: Proc) -> String {
        let path = self.dir().join(format!("{}.out", self.procs[p.0].0));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// An HTTP/1.1 GET from inside a host (a thread that enters its namespace): the body of
    /// a 200 answer.
    pub fn http_get(&self, host: &str, addr: SocketAddr, path: &str) -> Result<String, String> {
        let ns_file = format!("/var/run/netns/{}", self.ns(host));
        let path = path.to_string();
        std::thread::spawn(move || -> Result<String, String> {
            use std::io::{Read, Write};
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&ns_file).map_err(|e| format!("{ns_file}: {e}"))?;
            // SAFETY: setns only moves this (short-lived) thread into the namespace `file`
            // names.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .map_err(|e| format!("write: {e}"))?;
            let mut text = String::new();
            s.read_to_string(&mut text)
                .map_err(|e| format!("read: {e}"))?;
            let (head, body) = text
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
            }
            Ok(body.to_string())
        })
        .join()
        .map_err(|_| "the HTTP thread panicked".to_string())?
    }

    /// The processes whose parent is `p` (a hub's shard processes), by id.
    pub fn children(&self, p: Proc) -> Vec<u32> {
        let parent = self.pid(p);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    // `pid (comm) state ppid …`: comm may hold spaces, so split after it.
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                        == Some(parent)
                })
            })
            .collect()
    }

    /// Prints the end of every log (on a failure).
    fn dump_logs(&self) {
        for (name, _) in &self.procs {
            let text =
                std::fs::read_to_string(self.dir().join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {name}.log (last 80 of {} lines)", lines.len());
            for l in &lines[lines.len().saturating_sub(80)..] {
                eprintln!("{}", strip_ansi(l));
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Processes the lab did not start itself (a hub's shard processes) and anything
        // else left in its namespaces.
        for ns in self.hosts.iter().rev() {
            kill_all_in(ns);
        }
        for ns in self.hosts.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `f` every `every` until it answers, at most `within`.
pub fn wait_for<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = crate::clock::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if crate::clock::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// One Prometheus family's samples by shard id (`shard="N"`).
pub fn by_shard(metrics: &str, family: &str) -> BTreeMap<u32, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let shard = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("shard=\""))?
                .trim_end_matches('"')
                .parse()
                .ok()?;
            Some((shard, value.trim().parse().ok()?))
        })
        .collect()
}

/// A family without labels.
pub fn scalar(metrics: &str, family: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(family)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The JSON object on the last line of a `--json` run's stdout.
pub fn last_json(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}
