//! Things a worker thread keeps between requests to refill instead of allocating anew: header lists
//! (`header_list`), a chain's list of streams and its facts (`chain`). Per thread, so taking and keeping one
//! touches nothing another worker does.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's kept things of one kind.
pub(super) type Spares<T> = LocalKey<RefCell<Vec<T>>>;

/// At most this many of a kind are kept per worker thread.
const KEPT_MAX: usize = 256;

/// One of the things `spares` keeps, if any.
pub(super) fn take<T: 'static>(spares: &'static Spares<T>) -> Option<T> {
    spares.with_borrow_mut(Vec::pop)
}

/// Keeps `spare` for a later request, up to [`KEPT_MAX`] of a kind per worker thread.
pub(super) fn keep<T: 'static>(spares: &'static Spares<T>, spare: T) {
    spares.with_borrow_mut(|kept| {
        if kept.len() < KEPT_MAX {
            kept.push(spare);
        }
    });
}
