//! Per-shard CPU accounting: every task of a shard runs inside [`Metered`], which adds the
//! calling thread's CPU time spent in each poll to the shard's counter. Embedded shards share
//! one runtime, so a process-wide figure would not say which shard is busy; this does.
//!
//! Cost: two `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` calls per poll.
//!
//! A lower bound: quinn runs packet I/O, crypto and congestion control in its own endpoint and
//! connection driver tasks, which are not the shard's tasks and are not charged here. The figure
//! compares shards with each other; it is not the process's CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// CPU time of the calling thread, in nanoseconds (0 if the clock is unavailable).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec passed by pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A future whose polls are charged to `sink` (nanoseconds of thread CPU time).
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    sink: Arc<AtomicU64>,
}

impl<F: Future> Metered<F> {
    pub fn new(inner: F, sink: Arc<AtomicU64>) -> Self {
        Self {
            inner: Box::pin(inner),
            sink,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_ns();
        let r = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(start);
        self.sink.fetch_add(spent, Ordering::Relaxed);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_polls_are_charged() {
        let sink = Arc::new(AtomicU64::new(0));
        let work = async {
            let mut x = 0u64;
            for i in 0..2_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x)
        };
        Metered::new(work, sink.clone()).await;
        assert!(sink.load(Ordering::Relaxed) > 0, "CPU time was charged");
        let idle = Arc::new(AtomicU64::new(0));
        Metered::new(
            tokio::time::sleep(std::time::Duration::from_millis(20)),
            idle.clone(),
        )
        .await;
        assert!(
            idle.load(Ordering::Relaxed) < sink.load(Ordering::Relaxed),
            "sleeping costs less than spinning"
        );
    }
}
