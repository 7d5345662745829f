//! Lock poisoning, decided once: every state behind a std `Mutex` here stays consistent
//! between statements (no invariant spans a panic point), so a poisoned lock keeps serving.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering from poisoning (see the module doc).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
