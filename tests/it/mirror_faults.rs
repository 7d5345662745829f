//! Mirror faults that need more than one process or a network of their own: 10 % random loss on
//! every path (nftables `numgen` in a network namespace this test creates and deletes), and a
//! receiver process killed while it is the active endpoint.
//!
//! The namespace test needs root with `ip` and `nft` (`.ci/run` installs nftables). It fails
//! with a clear message when they are missing instead of passing silently.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::mirror::machine::Event;
use shoal::mirror::{MirrorConfig, MirrorSender, SwitchCause};
use shoal::synthetic::SyntheticSpec;
use shoal::tools::bench::failover::{Rig, RigCerts, RigOptions};

/// A network namespace with its loopback up; deleted on drop.
struct Netns {
    name: String,
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if let (Some(text), Some(mut w)) = (stdin, c.stdin.take()) {
        use std::io::Write;
        w.write_all(text.as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
    }
    let out = c.wait_with_output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "shoal-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name], None)?;
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"], None)?;
        Ok(ns)
    }

    /// Packets the loss rule dropped so far (its `counter`).
    fn dropped_packets(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "nft",
                "list",
                "table",
                "inet",
                "shoal_loss",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn nft(&self, rules: &str) -> Result<(), String> {
        run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(rules),
        )
    }

    /// Runs `f` on a thread inside the namespace (threads it starts inherit it).
    fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns only changes this thread's network namespace to the one `file` names.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name], None);
    }
}

#[test]
fn ten_percent_loss_on_every_path_loses_and_duplicates_nothing() {
    if std::env::var_os("SHOAL_SKIP_NETNS").is_some() {
        eprintln!("SHOAL_SKIP_NETNS set: skipping the namespace test");
        return;
    }
    let ns = Netns::create().unwrap_or_else(|e| {
        panic!("this test needs root, `ip` and `nft` (set SHOAL_SKIP_NETNS=1 to skip): {e}")
    });
    // Every UDP datagram in the namespace (all three paths, both ways) has a 10 % chance to
    // be dropped.
    ns.nft(
        "table inet shoal_loss {\n\
           chain input {\n\
             type filter hook input priority 0; policy accept;\n\
             meta l4proto udp numgen random mod 100 < 10 counter drop\n\
           }\n\
         }\n",
    )
    .expect("nftables rule");
    let (failover, broadcast) = ns.enter(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let certs = RigCerts::generate().expect("certs");
            let o = RigOptions {
                one_way: Duration::from_millis(2),
                ..RigOptions::default()
            };
            let rig = Rig::start(&o, certs.clone()).await.expect("rig");
            assert!(
                rig.wait_for(Duration::from_secs(10), |s| s.committed_seq.is_some())
                    .await
            );
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // A failover under loss too.
            if let Some((_, i)) = rig.active() {
                rig.relays[i].set_blackhole(true);
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let ledger = rig.finish(Duration::from_secs(10)).await;
            let failover = ledger.tally_union();
            // No relay here: every path is exactly one lossy hop each way.
            let o = RigOptions {
                one_way: Duration::ZERO,
                ..shoal::tools::bench::failover::broadcast_options()
            };
            let rig = Rig::start(&o, certs).await.expect("rig");
            // A receiver whose handshake loses packets joins later, at the live edge (as
            // PROTOCOL §9.4 says): the window counts from when every receiver has something.
            assert!(
                rig.wait_for(Duration::from_secs(20), |s| s
                    .endpoints
                    .iter()
                    .all(|e| e.acked_seq.is_some()))
                    .await,
                "every receiver connects and acknowledges under 10 % loss"
            );
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let sender = rig.sender.clone();
            let ledger = rig.finish(Duration::from_secs(10)).await;
            if std::env::var_os("SHOAL_DEBUG").is_some() {
                let snap = sender.snapshot();
                eprintln!("head {:?} settled {}", snap.head_seq, sender.settled());
                for e in &snap.endpoints {
                    eprintln!(
                        "{:?} {:?} acked {:?} next {:?} err {:?} {:?}",
                        e.id, e.state, e.acked_seq, e.next_seq, e.last_error, e.counters
                    );
                }
                for r in &ledger.receivers {
                    eprintln!(
                        "recv first {:?} last {:?} n {}",
                        r.seqs.first(),
                        r.seqs.last(),
                        r.seqs.len()
                    );
                }
            }
            let broadcast = ledger.tally_each();
            (failover, broadcast)
        })
    });
    let dropped = ns.dropped_packets();
    drop(ns);
    assert!(
        dropped > 100,
        "the loss rule dropped only {dropped} packets"
    );
    assert!(failover.pushed > 1000, "{failover:?}");
    assert_eq!(
        (failover.lost, failover.duplicated, failover.out_of_order),
        (0, 0, 0),
        "{failover:?}"
    );
    for t in broadcast {
        assert!(t.pushed > 500, "{t:?}");
        assert_eq!((t.lost, t.duplicated, t.out_of_order), (0, 0, 0), "{t:?}");
    }
}

/// A `shoal receive` child process and what it printed.
struct ReceiverProcess {
    child: Child,
    addr: SocketAddr,
    seqs: Arc<Mutex<Vec<u64>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ReceiverProcess {
    fn spawn() -> ReceiverProcess {
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args([
                "receive",
                "--listen",
                "127.0.0.1:0",
                "--print-seqs",
                "--verify",
            ])
            .arg("--cert")
            .arg(certs.join("cluster.pem"))
            .arg("--key")
            .arg(certs.join("cluster.key"))
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shoal receive starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let (Some(tx), Ok(a)) = (tx.take(), rest.trim().parse::<SocketAddr>()) {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("`shoal receive` prints `listening on ADDR`");
        let stdout = child.stdout.take().expect("piped");
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let out = seqs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut it = line.split_whitespace();
                if it.next() == Some("chunk") {
                    if let Some(seq) = it.nth(1).and_then(|s| s.parse().ok()) {
                        out.lock().unwrap().push(seq);
                    }
                }
            }
        });
        ReceiverProcess {
            child,
            addr,
            seqs,
            reader: Some(reader),
        }
    }

    /// Kills the process and returns every sequence it printed.
    fn kill(mut self) -> Vec<u64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.seqs.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_receiver_process_loses_nothing() {
    let procs: Vec<_> = (0..3).map(|_| ReceiverProcess::spawn()).collect();
    let addrs: Vec<_> = procs.iter().map(|p| p.addr).collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let read = |f: &str| shoal::security::tls::read_certs(&dir.join(f)).unwrap();
    let key = shoal::security::tls::read_key(&dir.join("cluster.key")).unwrap();
    let stream = shoal::ids::StreamName::new("synth/killed").unwrap();
    let mut opts = shoal::mirror::SenderOptions::new(
        stream.clone(),
        shoal::DEFAULT_CLUSTER,
        read("ca.pem"),
        read("cluster.pem"),
        key,
    );
    opts.bind_ip = [127, 0, 0, 1].into();
    opts.config = MirrorConfig {
        revert_after: None,
        ..MirrorConfig::default()
    };
    let sender = Arc::new(MirrorSender::start(opts, &addrs).unwrap());
    let mut events = sender.events();
    let spec = SyntheticSpec {
        rate_hz: 500,
        chunk_bytes: 512,
    };
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let (sender, pushed, stream) = (sender.clone(), pushed.clone(), stream.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(spec.period_us()));
            let mut seq = spec.live_seq(shoal::unix_us());
            loop {
                tick.tick().await;
                if sender.push(spec.chunk(&stream, seq)).await.is_err() {
                    return;
                }
                pushed.lock().unwrap().push(seq.get());
                seq = seq
                    .next()
                    .expect("the live edge is far below the end of the sequence space");
            }
        })
    };
    let until = shoal::clock::now() + Duration::from_secs(10);
    while sender.snapshot().committed_seq.is_none() && shoal::clock::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let active = sender.snapshot().active[0];
    let active_addr = sender
        .snapshot()
        .endpoints
        .iter()
        .find(|e| e.id == active)
        .unwrap()
        .addr;
    let mut procs = procs;
    let victim = procs.iter().position(|p| p.addr == active_addr).unwrap();
    let killed = procs.remove(victim).kill();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(
                ev @ Event::Switched {
                    cause: SwitchCause::Failure,
                    ..
                },
            ) = events.recv().await
            {
                return ev;
            }
        }
    })
    .await
    .expect("a failure switch after the kill");
    assert!(matches!(ev, Event::Switched { from: Some(f), .. } if f == active));
    tokio::time::sleep(Duration::from_millis(700)).await;
    producer.abort();
    let _ = producer.await;
    let until = shoal::clock::now() + Duration::from_secs(5);
    while !sender.settled() && shoal::clock::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut delivered: Vec<Vec<u64>> = procs.into_iter().map(ReceiverProcess::kill).collect();
    delivered.push(killed);
    let pushed = pushed.lock().unwrap().clone();
    assert!(pushed.len() > 500);
    let mut all = std::collections::HashSet::new();
    for seqs in &delivered {
        let mut mine = std::collections::HashSet::new();
        for s in seqs {
            assert!(mine.insert(*s), "a receiver printed {s} twice");
            all.insert(*s);
        }
    }
    let lost: Vec<_> = pushed.iter().filter(|s| !all.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "lost {} chunks: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
