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

/// Skips polling the futures of a `select!` loop that rarely wake while another branch wakes
/// the loop often: a shard session's control stream and go-away wait, polled once per chunk
/// sent otherwise (each poll takes the connection's lock or a lock every session shares).
///
/// The gated futures are polled with the gate's own waker. A loop turn calls
/// [`WakeGate::open`] once, then polls each gated future through [`WakeGate::poll`]: when
/// none of them woke since the last turn that polled them, they are not polled at all and
/// count as pending. A gated future that completes keeps the gate open for the next turn
/// (it may have more ready at once, as a reader with a second frame buffered does).
///
/// The loop's own waker is remembered at every gated poll, polled or not, so a wake always
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
    /// A gate that is open: the first turn polls everything.
    pub(crate) fn new() -> Self {
        WakeGate(Arc::new(GateState {
            woken: AtomicBool::new(true),
            parent: Mutex::new(None),
        }))
    }

    /// Whether this turn polls the gated futures: one of them woke (or completed) since the
    /// last turn that did. Call once per turn, before the polls.
    pub(crate) fn open(&self) -> bool {
        self.0.woken.swap(false, Ordering::AcqRel)
    }

    /// Polls `fut` with the gate's waker when `open` (this turn's [`WakeGate::open`]), else
    /// answers pending without polling it.
    pub(crate) fn poll<F: Future + ?Sized>(
        &self,
        open: bool,
        fut: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        {
            let mut parent = lock(&self.0.parent);
            if !parent.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *parent = Some(cx.waker().clone());
            }
        }
        if !open {
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
    pub(crate) fn gated<F: Future>(&self, open: bool, fut: F) -> Gated<'_, F> {
        Gated {
            gate: self,
            open,
            fut,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`WakeGate::gated`]. A struct rather than an async fn, which would hold `fut` twice.
    pub(crate) struct Gated<'a, F> {
        gate: &'a WakeGate,
        open: bool,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.gate.poll(*this.open, this.fut, cx)
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

    struct Flag(AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_gated_future_is_polled_only_after_it_woke_and_its_wake_reaches_the_loop() {
        let gate = WakeGate::new();
        let (polls, ready) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let waker = Arc::new(Mutex::new(None));
        let mut probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        let loop_wakes = Arc::new(Flag(AtomicUsize::new(0)));
        let loop_waker = Waker::from(loop_wakes.clone());
        let mut cx = Context::from_waker(&loop_waker);
        // The first turn polls it; ten turns woken by something else do not.
        for _ in 0..11 {
            let open = gate.open();
            assert!(gate.poll(open, Pin::new(&mut probe), &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own wake goes to the loop's waker and opens the gate once.
        let w = lock(&waker)
            .take()
            .expect("the probe kept the gate's waker");
        ready.store(true, Ordering::Relaxed);
        w.wake();
        assert_eq!(loop_wakes.0.load(Ordering::Relaxed), 1);
        let open = gate.open();
        assert!(gate.poll(open, Pin::new(&mut probe), &mut cx).is_ready());
        // Completed: the next turn polls again (it may have more ready), then closes.
        let open = gate.open();
        assert!(open, "a completed future keeps the gate open");
        assert!(gate.poll(open, Pin::new(&mut probe), &mut cx).is_ready());
        ready.store(false, Ordering::Relaxed);
        let open = gate.open();
        assert!(gate.poll(open, Pin::new(&mut probe), &mut cx).is_pending());
        assert!(!gate.open(), "pending with no wake: closed");
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_wake_reaches_the_waker_of_the_latest_turn() {
        let gate = WakeGate::new();
        let (polls, ready) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let waker = Arc::new(Mutex::new(None));
        let mut probe = Probe {
            polls,
            ready,
            waker: waker.clone(),
        };
        let (first, second) = (
            Arc::new(Flag(AtomicUsize::new(0))),
            Arc::new(Flag(AtomicUsize::new(0))),
        );
        let w1 = Waker::from(first.clone());
        let open = gate.open();
        let _ = gate.poll(open, Pin::new(&mut probe), &mut Context::from_waker(&w1));
        // A turn under another waker, gate closed: the probe is not polled, the waker is kept.
        let w2 = Waker::from(second.clone());
        let open = gate.open();
        let _ = gate.poll(open, Pin::new(&mut probe), &mut Context::from_waker(&w2));
        lock(&waker).take().expect("kept").wake();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }
}
