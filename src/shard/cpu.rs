//! Per-shard CPU accounting: every task of a shard runs inside [`Metered`], which adds the time
//! each poll of the task took to the shard's counter. Embedded shards share one runtime, so a
//! process-wide figure would not say which shard is busy; this does.
//!
//! A poll is timed by the monotonic clock, which the vDSO reads without entering the kernel
//! (tens of nanoseconds). A poll does not block, so its wall time is the CPU time its thread
//! spent in it, except when the kernel preempts the thread mid-poll: then the figure counts
//! the wait too, an over-estimate only on a machine with more runnable threads than cores.
//! The thread's own CPU clock (`CLOCK_THREAD_CPUTIME_ID`) would not count that, but it is a
//! system call, and two per poll were a measurable share of a shard's cost per chunk sent
//! (issue 19's fan-out profile; see the README's performance section).
//!
//! A lower bound in another way: quinn runs packet I/O, crypto and congestion control in its
//! own endpoint and connection driver tasks, which are not the shard's tasks and are not
//! charged here. The figure compares shards with each other; it is not the process's CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// A future whose polls are charged to `sink` (nanoseconds spent inside them).
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

    // A meter times what a poll really took, never a paused runtime's virtual time.
    #[allow(clippy::disallowed_methods)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = std::time::Instant::now();
        let r = self.inner.as_mut().poll(cx);
        let spent = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
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
