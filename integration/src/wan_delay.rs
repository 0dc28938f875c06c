//! [`WanDelay`]: added latency on one network interface of another network namespace (a
//! container's), in both directions — what `tc qdisc add dev IF root netem delay 40ms` does on
//! a kernel that has netem.
//!
//! Kernels built without `sch_netem` (the project's CI machines among them) can still queue
//! packets to user space: two iptables rules in the namespace send every packet leaving and
//! entering the interface to an NFQUEUE, and a thread of this process, moved into that
//! namespace, holds each one for the one-way delay before letting it through, in arrival order.
//! A round trip over the interface therefore takes at least twice the delay. The rules carry
//! `--queue-bypass` and the queue is fail-open, so if this process goes away or falls behind,
//! packets flow undelayed rather than being dropped.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `nsenter` and `iptables`.

use std::collections::VecDeque;
use std::fs::File;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// Packets the kernel keeps queued for us at most; beyond, fail-open lets them through.
const QUEUE_MAX_LEN: u32 = 4096;

/// Latency on an interface of another network namespace; removed on drop.
#[derive(Debug)]
pub struct WanDelay {
    pid: u32,
    rules: Vec<Vec<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WanDelay {
    /// Delays every packet that leaves or enters `iface` in the network namespace of process
    /// `pid` by `one_way`, using NFQUEUE number `queue` in that namespace.
    pub fn start(pid: u32, iface: &str, one_way: Duration, queue: u16) -> Result<Self, String> {
        let netns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("network namespace of process {pid}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("wan-delay-{pid}"))
                .spawn(move || {
                    // The netlink socket belongs to the namespace of the thread that opens it;
                    // setns moves only this thread.
                    let queue = setns(&netns, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns into process {pid}'s network: {e}"))
                        .and_then(|()| open_queue(queue));
                    match queue {
                        Ok(q) => {
                            let _ = ready_tx.send(Ok(()));
                            hold_and_release(q, one_way, &stop);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| format!("cannot start the delay thread: {e}"))?
        };
        let mut delay = WanDelay {
            pid,
            rules: Vec::new(),
            stop,
            thread: Some(thread),
        };
        ready_rx
            .recv()
            .map_err(|_| "the delay thread ended before it was ready".to_owned())??;
        let q = queue.to_string();
        for (chain, dir) in [("OUTPUT", "-o"), ("INPUT", "-i")] {
            let rule: Vec<String> = [
                chain,
                dir,
                iface,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
                "--queue-bypass",
            ]
            .map(str::to_owned)
            .into();
            iptables(pid, "-I", &rule)?;
            delay.rules.push(rule);
        }
        Ok(delay)
    }
}

impl Drop for WanDelay {
    fn drop(&mut self) {
        // Rules first, so nothing new is queued; then the thread releases what it still holds.
        for rule in self.rules.drain(..) {
            if let Err(e) = iptables(self.pid, "-D", &rule) {
                eprintln!("wan delay: {e}");
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn iptables(pid: u32, op: &str, rule: &[String]) -> Result<(), String> {
    let target = pid.to_string();
    let out = Command::new("nsenter")
        .args(["-t", &target, "-n", "iptables", "-w", op])
        .args(rule)
        .output()
        .map_err(|e| format!("nsenter iptables: {e} (needs util-linux and iptables)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {op} {} in process {pid}'s network: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn open_queue(num: u16) -> Result<nfq::Queue, String> {
    let fail = |what: &str, e: std::io::Error| format!("NFQUEUE {num}: {what}: {e}");
    let mut q = nfq::Queue::open().map_err(|e| fail("open", e))?;
    q.bind(num).map_err(|e| fail("bind", e))?;
    // Metadata only: the verdict does not need the payload.
    q.set_copy_range(num, 0)
        .map_err(|e| fail("copy range", e))?;
    q.set_fail_open(num, true)
        .map_err(|e| fail("fail open", e))?;
    q.set_queue_max_len(num, QUEUE_MAX_LEN)
        .map_err(|e| fail("queue length", e))?;
    q.set_nonblocking(true);
    Ok(q)
}

/// Takes packets as they come and lets each go `one_way` after it arrived, until `stop`.
fn hold_and_release(mut q: nfq::Queue, one_way: Duration, stop: &AtomicBool) {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + one_way, msg));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ENOBUFS: the kernel dropped queue messages for us (fail-open passed
                    // their packets); keep going.
                    if e.raw_os_error() != Some(nix::libc::ENOBUFS) {
                        eprintln!("wan delay: receiving from the queue: {e}");
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| stopping || *due <= now) {
            if let Some((_, msg)) = held.pop_front()
                && let Err(e) = q.verdict(msg)
            {
                eprintln!("wan delay: verdict: {e}");
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
