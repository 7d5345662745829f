//! Lock poisoning, decided once: every state behind a std `Mutex` here stays consistent
//! between statements (no invariant spans a panic point), so a poisoned lock keeps serving.
//!
//! And [`WakeGate`]: futures a loop polls only after they woke.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// Locks `m`, recovering from poisoning (see the module doc).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Skips polling a future of a `select!` loop that rarely wakes while another branch wakes the
/// loop often: a shard session's control stream and go-away wait, polled once per chunk sent
/// otherwise (each poll takes the connection's lock, or a lock every session shares).
///
/// One gate per future. The future is polled with the gate's own waker, and only when that
/// waker fired since the future last returned pending; otherwise [`WakeGate::poll`] answers
/// pending without polling it. A wake is consumed only by a poll that polls the future, so a
/// turn that ends before reaching the branch (an earlier branch completed) loses nothing. A
/// future that completes keeps its gate open (it may have more ready at once, as a reader with
/// a second frame buffered does).
///
/// The loop's own waker is remembered at every poll, polled through or not, so a wake always
/// reaches the task that polls the loop now.
pub(crate) struct WakeGate(Arc<GateState>);

struct GateState {
    woken: AtomicBool,
    parent: Mutex<Option<Waker>>,
}

impl Wake for GateState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = lock(&self.parent).as_ref() {
            w.wake_by_ref();
        }
    }
}

impl WakeGate {
    /// An open gate: the first poll polls the future.
    pub(crate) fn new() -> Self {
        WakeGate(Arc::new(GateState {
            woken: AtomicBool::new(true),
            parent: Mutex::new(None),
        }))
    }

    /// Polls `fut` with the gate's waker if the gate is open, else answers pending.
    pub(crate) fn poll<F: Future + ?Sized>(
        &self,
        fut: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        {
            let mut parent = lock(&self.0.parent);
            if !parent.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *parent = Some(cx.waker().clone());
            }
        }
        // Cleared before the poll: a wake during it opens the gate again.
        if !self.0.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.0.clone());
        let r = fut.poll(&mut Context::from_waker(&waker));
        if r.is_ready() {
            self.0.woken.store(true, Ordering::Release);
        }
        r
    }

    /// [`WakeGate::poll`] as a future, for a `select!` branch.
    pub(crate) fn gated<F: Future>(&self, fut: F) -> Gated<'_, F> {
        Gated { gate: self, fut }
    }
}

pin_project_lite::pin_project! {
    /// See [`WakeGate::gated`]. A struct rather than an async fn, which would hold `fut` twice.
    pub(crate) struct Gated<'a, F> {
        gate: &'a WakeGate,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.gate.poll(this.fut, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, pending (waker kept) before.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *lock(&self.waker) = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    type Probed = (
        Probe,
        Arc<AtomicUsize>,
        Arc<AtomicBool>,
        Arc<Mutex<Option<Waker>>>,
    );

    fn probe() -> Probed {
        let (polls, ready) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let waker = Arc::new(Mutex::new(None));
        let p = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        (p, polls, ready, waker)
    }

    struct Flag(AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_gated_future_is_polled_only_after_it_woke_and_its_wake_reaches_the_loop() {
        let gate = WakeGate::new();
        let (mut probe, polls, ready, waker) = probe();
        let loop_wakes = Arc::new(Flag(AtomicUsize::new(0)));
        let loop_waker = Waker::from(loop_wakes.clone());
        let mut cx = Context::from_waker(&loop_waker);
        // The first turn polls it; ten turns woken by something else do not.
        for _ in 0..11 {
            assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own wake goes to the loop's waker and opens the gate.
        let w = lock(&waker)
            .take()
            .expect("the probe kept the gate's waker");
        ready.store(true, Ordering::Relaxed);
        w.wake();
        assert_eq!(loop_wakes.0.load(Ordering::Relaxed), 1);
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_ready());
        // Completed: the next turn polls again (it may have more ready), then it closes.
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_ready());
        ready.store(false, Ordering::Relaxed);
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_wake_is_kept_until_a_turn_reaches_the_future() {
        // A turn that ends before it polls the branch (another branch completed first) must
        // not lose the wake: the next turn that reaches it polls it.
        let gate = WakeGate::new();
        let (mut probe, polls, _ready, waker) = probe();
        let loop_waker = Waker::from(Arc::new(Flag(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&loop_waker);
        let _ = gate.poll(Pin::new(&mut probe), &mut cx);
        lock(&waker).take().expect("kept").wake();
        // Turns that never reach the gated branch: nothing is polled, nothing consumed.
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2, "the wake was kept");
    }

    #[test]
    fn a_wake_reaches_the_waker_of_the_latest_turn() {
        let gate = WakeGate::new();
        let (mut probe, _polls, _ready, waker) = probe();
        let (first, second) = (
            Arc::new(Flag(AtomicUsize::new(0))),
            Arc::new(Flag(AtomicUsize::new(0))),
        );
        let w1 = Waker::from(first.clone());
        let _ = gate.poll(Pin::new(&mut probe), &mut Context::from_waker(&w1));
        // A turn under another waker, gate closed: the probe is not polled, the waker is kept.
        let w2 = Waker::from(second.clone());
        let _ = gate.poll(Pin::new(&mut probe), &mut Context::from_waker(&w2));
        lock(&waker).take().expect("kept").wake();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }
}
