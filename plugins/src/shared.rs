//! What plugins share across instances and versions, scoped by vm_id: the key/value store with CAS
//! (`proxy_get/set_shared_data`) and the shared queues (`proxy_*_shared_queue`). One per engine.
//!
//! A queue's owner is reached through a `Weak<dyn QueueSink>`: this module knows nothing of instance pools.
//!
//! Both live outside the guests' linear memory, so `memory_limit` does not bound them: writes stop at the caps in
//! [`crate::limits`] (keys, bytes and sizes of shared data; count, names, entries and bytes of queues) and answer
//! which cap was hit, for the hostcall to turn into an ABI status.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Weak;

use parking_lot::Mutex;

/// Where `proxy_on_queue_ready` goes: the plugin version whose root context registered the queue.
pub(crate) trait QueueSink: Send + Sync {
    /// Schedule `proxy_on_queue_ready(root, queue)` on the instance in `slot`, if it is still `generation`.
    fn queue_ready(&self, slot: usize, generation: u64, root: u32, queue: u32);
}

/// Who gets `proxy_on_queue_ready` for a queue.
#[derive(Clone)]
pub(crate) struct QueueOwner {
    pub sink: Weak<dyn QueueSink>,
    pub slot: usize,
    pub generation: u64,
    pub root_context: u32,
}

/// A value in the vm_id-scoped shared key/value store.
struct SharedValue {
    value: Vec<u8>,
    cas: u32,
}

struct SharedQueue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    /// Bytes in `items`.
    bytes: usize,
    owner: Option<QueueOwner>,
}

/// Result of a shared-data write.
pub(crate) enum SetShared {
    Ok,
    CasMismatch,
    /// The key or value alone is over its cap.
    TooLarge,
    /// The store is full (keys or bytes).
    Full,
}

/// Shared data with its size, kept under [`crate::limits`].
#[derive(Default)]
struct SharedData {
    map: HashMap<(String, String), SharedValue>,
    /// Key and value bytes held.
    bytes: usize,
    /// Keys and bytes held per vm_id (see [`crate::limits::VM_SHARE_DIVISOR`]).
    per_vm: HashMap<String, Usage>,
}

/// What one vm_id holds of a store: entries (keys, queues) and bytes.
#[derive(Default, Clone, Copy)]
struct Usage {
    count: usize,
    bytes: usize,
}

/// The queues with their sizes.
#[derive(Default)]
struct Queues {
    map: HashMap<u32, SharedQueue>,
    /// Bytes queued over all queues.
    bytes: usize,
    /// Queues and queued bytes per vm_id.
    per_vm: HashMap<String, Usage>,
}

/// Result of a queue write.
pub(crate) enum Enqueue {
    /// Queued; the owner to notify, if any.
    Ok(Option<QueueOwner>),
    NotFound,
    /// The entry alone is over the queue's byte cap.
    TooLarge,
    /// The queue holds its cap of entries or bytes.
    Full,
}

/// The shared data and queues of every plugin of one engine.
#[derive(Default)]
pub(crate) struct SharedState {
    data: Mutex<SharedData>,
    next_cas: AtomicU32,
    queues: Mutex<Queues>,
    next_queue: AtomicU32,
    /// Plugin versions loaded per vm_id: when the last one of a vm_id goes, its data and queues go too.
    live: Mutex<HashMap<String, usize>>,
}

impl SharedState {
    pub fn get_shared(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let data = self.data.lock();
        data.map.get(&(vm_id.to_string(), key.to_string())).map(|v| (v.value.clone(), v.cas))
    }

    /// CAS write per the spec: `cas == 0` writes unconditionally, otherwise it must equal the stored token.
    /// Within the caps: a key or value over its own cap is `TooLarge`; a new key past the key count, or a write
    /// past the byte total (a replaced value's bytes are freed first), is `Full`.
    pub fn set_shared(&self, vm_id: &str, key: &str, value: Vec<u8>, cas: u32) -> SetShared {
        use crate::limits::{MAX_SHARED_DATA_BYTES, MAX_SHARED_DATA_KEY, MAX_SHARED_DATA_KEYS, MAX_SHARED_DATA_VALUE};
        if key.len() > MAX_SHARED_DATA_KEY || value.len() > MAX_SHARED_DATA_VALUE {
            return SetShared::TooLarge;
        }
        let mut data = self.data.lock();
        let k = (vm_id.to_string(), key.to_string());
        if cas != 0 {
            match data.map.get(&k) {
                Some(existing) if existing.cas == cas => {}
                _ => return SetShared::CasMismatch,
            }
        }
        let old = data.map.get(&k).map(|v| k.1.len() + v.value.len());
        let bytes = data.bytes - old.unwrap_or(0) + key.len() + value.len();
        let mine = data.per_vm.get(vm_id).copied().unwrap_or_default();
        let my_bytes = mine.bytes - old.unwrap_or(0) + key.len() + value.len();
        let share = crate::limits::VM_SHARE_DIVISOR;
        let new_key = old.is_none();
        if (new_key && (data.map.len() >= MAX_SHARED_DATA_KEYS || mine.count >= MAX_SHARED_DATA_KEYS / share))
            || bytes > MAX_SHARED_DATA_BYTES
            || my_bytes > MAX_SHARED_DATA_BYTES / share
        {
            return SetShared::Full;
        }
        data.bytes = bytes;
        let usage = data.per_vm.entry(vm_id.to_string()).or_default();
        usage.bytes = my_bytes;
        usage.count += usize::from(new_key);
        let mut next = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if next == 0 {
            next = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        data.map.insert(k, SharedValue { value, cas: next });
        SetShared::Ok
    }

    /// The queue's id; registering an existing name makes the caller its owner. `None` when the name is over
    /// [`crate::limits::MAX_QUEUE_NAME`] or there are [`crate::limits::MAX_QUEUES`] already.
    pub fn register_queue(&self, vm_id: &str, name: &str, owner: QueueOwner) -> Option<u32> {
        use crate::limits::{MAX_QUEUES, MAX_QUEUE_NAME, VM_SHARE_DIVISOR};
        let mut queues = self.queues.lock();
        if let Some((id, q)) = queues.map.iter_mut().find(|(_, q)| q.vm_id == vm_id && q.name == name) {
            q.owner = Some(owner);
            return Some(*id);
        }
        let mine = queues.per_vm.get(vm_id).copied().unwrap_or_default();
        if name.len() > MAX_QUEUE_NAME || queues.map.len() >= MAX_QUEUES || mine.count >= MAX_QUEUES / VM_SHARE_DIVISOR
        {
            return None;
        }
        queues.per_vm.entry(vm_id.to_string()).or_default().count += 1;
        let id = self.next_queue.fetch_add(1, Ordering::Relaxed) + 1;
        queues.map.insert(
            id,
            SharedQueue {
                vm_id: vm_id.to_string(),
                name: name.to_string(),
                items: VecDeque::new(),
                bytes: 0,
                owner: Some(owner),
            },
        );
        Some(id)
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues.lock().map.iter().find(|(_, q)| q.vm_id == vm_id && q.name == name).map(|(id, _)| *id)
    }

    /// Appends to a queue within its caps ([`crate::limits::MAX_QUEUE_ENTRIES`],
    /// [`crate::limits::MAX_QUEUE_BYTES`]); dequeues make room again.
    pub fn enqueue(&self, id: u32, value: Vec<u8>) -> Enqueue {
        use crate::limits::{MAX_ALL_QUEUES_BYTES, MAX_QUEUE_BYTES, MAX_QUEUE_ENTRIES, VM_SHARE_DIVISOR};
        let mut guard = self.queues.lock();
        let queues = &mut *guard;
        let Some(q) = queues.map.get_mut(&id) else { return Enqueue::NotFound };
        if value.len() > MAX_QUEUE_BYTES {
            return Enqueue::TooLarge;
        }
        let n = value.len();
        // Every queue's vm_id has its usage, made when the queue was registered and gone with the queue.
        let Some(mine) = queues.per_vm.get_mut(&q.vm_id) else { return Enqueue::NotFound };
        if q.items.len() >= MAX_QUEUE_ENTRIES
            || q.bytes + n > MAX_QUEUE_BYTES
            || queues.bytes + n > MAX_ALL_QUEUES_BYTES
            || mine.bytes + n > MAX_ALL_QUEUES_BYTES / VM_SHARE_DIVISOR
        {
            return Enqueue::Full;
        }
        mine.bytes += n;
        queues.bytes += n;
        q.bytes += n;
        q.items.push_back(value);
        Enqueue::Ok(q.owner.clone())
    }

    /// Takes the oldest entry of a queue: `Err(())` for an unknown queue, `Ok(None)` when it is empty.
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, ()> {
        let mut guard = self.queues.lock();
        let queues = &mut *guard;
        let q = queues.map.get_mut(&id).ok_or(())?;
        let item = q.items.pop_front();
        if let Some(item) = &item {
            q.bytes -= item.len();
            queues.bytes -= item.len();
            if let Some(mine) = queues.per_vm.get_mut(&q.vm_id) {
                mine.bytes -= item.len();
            }
        }
        Ok(item)
    }

    /// A plugin version of `vm_id` was loaded.
    pub fn attach(&self, vm_id: &str) {
        *self.live.lock().entry(vm_id.to_string()).or_default() += 1;
    }

    /// A plugin version of `vm_id` went away; with the last one, the vm_id's shared data and queues go too
    /// (nothing can read them again, and they counted against every other plugin's room).
    pub fn detach(&self, vm_id: &str) {
        // Held while the vm_id's state goes, so a version of it loading meanwhile (`attach`) cannot set data
        // that is then cleared. Lock order: live, then data, then queues.
        let mut live = self.live.lock();
        match live.get_mut(vm_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                live.remove(vm_id);
            }
            None => return,
        }
        let mut data = self.data.lock();
        let freed = data.per_vm.remove(vm_id).unwrap_or_default();
        data.map.retain(|(vm, _), _| vm != vm_id);
        data.bytes -= freed.bytes;
        drop(data);
        let mut queues = self.queues.lock();
        let freed = queues.per_vm.remove(vm_id).unwrap_or_default();
        queues.map.retain(|_, q| q.vm_id != vm_id);
        queues.bytes -= freed.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::*;

    /// A queue owner nobody listens to: the caps do not depend on notifications.
    struct NoSink;
    impl QueueSink for NoSink {
        fn queue_ready(&self, _: usize, _: u64, _: u32, _: u32) {}
    }

    fn owner() -> QueueOwner {
        QueueOwner { sink: Weak::<NoSink>::new(), slot: 0, generation: 0, root_context: 1 }
    }

    #[test]
    fn shared_data_stops_at_its_caps_and_frees_what_is_replaced() {
        let shared = SharedState::default();
        assert!(matches!(shared.set_shared("vm", "k", vec![0; MAX_SHARED_DATA_VALUE + 1], 0), SetShared::TooLarge));
        assert!(matches!(
            shared.set_shared("vm", &"k".repeat(MAX_SHARED_DATA_KEY + 1), vec![], 0),
            SetShared::TooLarge
        ));
        // Bytes: one vm_id holds at most half of the 64 MiB; 32 values of 1 MiB do not fit with their keys.
        let fill = |vm: &str| {
            (0..64)
                .take_while(|i| {
                    matches!(
                        shared.set_shared(vm, &format!("big{i}"), vec![0; MAX_SHARED_DATA_VALUE], 0),
                        SetShared::Ok
                    )
                })
                .count()
        };
        assert_eq!(fill("vm"), 31);
        // Another plugin still has its half.
        assert_eq!(fill("other"), 31);
        // Replacing a value frees its bytes first.
        assert!(matches!(shared.set_shared("vm", "big0", vec![0; MAX_SHARED_DATA_VALUE], 0), SetShared::Ok));
        assert!(matches!(shared.set_shared("vm", "big0", vec![], 0), SetShared::Ok));
        assert!(matches!(shared.set_shared("vm", "big31", vec![0; 1000], 0), SetShared::Ok));
        // Keys: half of them per vm_id, all of them over every vm_id.
        let shared = SharedState::default();
        let half = MAX_SHARED_DATA_KEYS / crate::limits::VM_SHARE_DIVISOR;
        for vm in ["a", "b"] {
            for i in 0..half {
                assert!(matches!(shared.set_shared(vm, &i.to_string(), vec![], 0), SetShared::Ok), "{vm} key {i}");
            }
            assert!(matches!(shared.set_shared(vm, "one more", vec![], 0), SetShared::Full));
        }
        assert!(matches!(shared.set_shared("c", "0", vec![], 0), SetShared::Full), "the store is full");
        assert!(matches!(shared.set_shared("a", "0", vec![1], 0), SetShared::Ok), "an existing key can change");
    }

    #[test]
    fn a_vm_ids_data_and_queues_go_with_its_last_plugin() {
        let shared = SharedState::default();
        shared.attach("vm");
        shared.attach("vm");
        assert!(matches!(shared.set_shared("vm", "k", vec![0; 1000], 0), SetShared::Ok));
        let id = shared.register_queue("vm", "q", owner()).unwrap_or_else(|| panic!("registered"));
        assert!(matches!(shared.enqueue(id, vec![0; 1000]), Enqueue::Ok(_)));
        // A swap: the new version loaded, the old one gone. The data stays.
        shared.detach("vm");
        assert!(shared.get_shared("vm", "k").is_some());
        shared.detach("vm");
        assert!(shared.get_shared("vm", "k").is_none());
        assert!(shared.resolve_queue("vm", "q").is_none());
        assert_eq!((shared.data.lock().bytes, shared.queues.lock().bytes), (0, 0));
    }

    #[test]
    fn queues_stop_at_their_caps_and_dequeues_make_room() {
        let shared = SharedState::default();
        assert!(shared.register_queue("vm", &"q".repeat(MAX_QUEUE_NAME + 1), owner()).is_none());
        let id = shared.register_queue("vm", "q", owner()).unwrap_or_else(|| panic!("registered"));
        for i in 0..MAX_QUEUE_ENTRIES {
            assert!(matches!(shared.enqueue(id, vec![1]), Enqueue::Ok(_)), "entry {i}");
        }
        assert!(matches!(shared.enqueue(id, vec![1]), Enqueue::Full));
        assert_eq!(shared.dequeue(id), Ok(Some(vec![1])));
        assert!(matches!(shared.enqueue(id, vec![1]), Enqueue::Ok(_)));
        assert!(matches!(shared.enqueue(id, vec![0; MAX_QUEUE_BYTES + 1]), Enqueue::TooLarge));
        // Bytes, per queue.
        let big = shared.register_queue("vm", "big", owner()).unwrap_or_else(|| panic!("registered"));
        let fitted = (0..32).take_while(|_| matches!(shared.enqueue(big, vec![0; 1 << 20]), Enqueue::Ok(_))).count();
        assert_eq!(fitted, MAX_QUEUE_BYTES >> 20);
        assert!(shared.dequeue(big).is_ok_and(|item| item.is_some()));
        assert!(matches!(shared.enqueue(big, vec![0; 1 << 20]), Enqueue::Ok(_)));
        // Bytes, per vm_id (half of all queues' 64 MiB): a second full queue does not fit.
        let more = shared.register_queue("vm", "more", owner()).unwrap_or_else(|| panic!("registered"));
        let fitted = (0..32).take_while(|_| matches!(shared.enqueue(more, vec![0; 1 << 20]), Enqueue::Ok(_))).count();
        assert!(fitted < MAX_QUEUE_BYTES >> 20, "{fitted}");
        let other = shared.register_queue("other", "q", owner()).unwrap_or_else(|| panic!("registered"));
        assert!(matches!(shared.enqueue(other, vec![0; 1 << 20]), Enqueue::Ok(_)), "another vm_id has its half");
        // Queue count: half per vm_id.
        let half = MAX_QUEUES / crate::limits::VM_SHARE_DIVISOR;
        for i in 3..half {
            assert!(shared.register_queue("vm", &format!("q{i}"), owner()).is_some(), "queue {i}");
        }
        assert!(shared.register_queue("vm", "one too many", owner()).is_none());
        assert!(shared.register_queue("vm", "q", owner()).is_some(), "registering an existing queue again works");
        assert!(shared.register_queue("other", "q2", owner()).is_some());
    }
}
