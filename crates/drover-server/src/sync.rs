//! Locking the server's in-memory state.

/// Locks a mutex, taking it over from a task that panicked while holding it: every value the server keeps
/// behind a std mutex (maps of streams and fetches, sets of changed nodes, the store's connections, whose
/// transactions roll back) is whole between statements, so a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
