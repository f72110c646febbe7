//! What plugins share across instances and versions, scoped by vm_id: the key/value store with CAS
//! (`proxy_get/set_shared_data`) and the shared queues (`proxy_*_shared_queue`). One per engine.
//!
//! A queue's owner is reached through a `Weak<dyn QueueSink>`: this module knows nothing of instance pools.

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
    owner: Option<QueueOwner>,
}

/// Result of a shared-data write.
pub(crate) enum SetShared {
    Ok,
    CasMismatch,
}

/// Result of a queue write.
pub(crate) enum Enqueue {
    /// Queued; the owner to notify, if any.
    Ok(Option<QueueOwner>),
    NotFound,
}

/// The shared data and queues of every plugin of one engine.
#[derive(Default)]
pub(crate) struct SharedState {
    data: Mutex<HashMap<(String, String), SharedValue>>,
    next_cas: AtomicU32,
    queues: Mutex<HashMap<u32, SharedQueue>>,
    next_queue: AtomicU32,
}

impl SharedState {
    pub fn get_shared(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let map = self.data.lock();
        map.get(&(vm_id.to_string(), key.to_string())).map(|v| (v.value.clone(), v.cas))
    }

    /// CAS write per the spec: `cas == 0` writes unconditionally, otherwise it must equal the stored token.
    pub fn set_shared(&self, vm_id: &str, key: &str, value: Vec<u8>, cas: u32) -> SetShared {
        let mut map = self.data.lock();
        let k = (vm_id.to_string(), key.to_string());
        if cas != 0 {
            match map.get(&k) {
                Some(existing) if existing.cas == cas => {}
                _ => return SetShared::CasMismatch,
            }
        }
        let mut next = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if next == 0 {
            next = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        map.insert(k, SharedValue { value, cas: next });
        SetShared::Ok
    }

    /// The queue's id; registering an existing name makes the caller its owner.
    pub fn register_queue(&self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let mut queues = self.queues.lock();
        if let Some((id, q)) = queues.iter_mut().find(|(_, q)| q.vm_id == vm_id && q.name == name) {
            q.owner = Some(owner);
            return *id;
        }
        let id = self.next_queue.fetch_add(1, Ordering::Relaxed) + 1;
        queues.insert(
            id,
            SharedQueue {
                vm_id: vm_id.to_string(),
                name: name.to_string(),
                items: VecDeque::new(),
                owner: Some(owner),
            },
        );
        id
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues.lock().iter().find(|(_, q)| q.vm_id == vm_id && q.name == name).map(|(id, _)| *id)
    }

    /// Appends to a queue.
    pub fn enqueue(&self, id: u32, value: Vec<u8>) -> Enqueue {
        let mut queues = self.queues.lock();
        let Some(q) = queues.get_mut(&id) else { return Enqueue::NotFound };
        q.items.push_back(value);
        Enqueue::Ok(q.owner.clone())
    }

    /// Takes the oldest entry of a queue: `Err(())` for an unknown queue, `Ok(None)` when it is empty.
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, ()> {
        let mut queues = self.queues.lock();
        let q = queues.get_mut(&id).ok_or(())?;
        Ok(q.items.pop_front())
    }
}
