//! Shared queues: `proxy_register/_resolve/_enqueue/_dequeue_shared_queue`. `proxy_on_queue_ready` runs later
//! on the root context that registered the queue, never re-entrantly from `enqueue`. Registering and enqueueing
//! stop at the caps of [`crate::limits`]: BAD_ARGUMENT when the name or entry alone is too large,
//! INTERNAL_FAILURE when there are too many queues or the queue is full, with a rate-limited warning.

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::limits;
use crate::memory::{self as mem, Ctx};
use crate::shared::{Enqueue, QueueOwner};

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_register_shared_queue", |mut c: Ctx<'_>, np: i32, nn: i32, ret: i32| -> Result<i32> {
        let name = mem::read_str(&mut c, np, nn, "proxy_register_shared_queue")?;
        mem::check(&mut c, ret, 4, "proxy_register_shared_queue")?;
        let st = c.data();
        let owner = QueueOwner {
            sink: st.core.queue_sink.clone(),
            slot: st.slot,
            generation: st.generation,
            root_context: st.root_context,
        };
        let Some(id) = st.core.shared.register_queue(&st.core.vm_id, &name, owner) else {
            limits::refused(
                &st.core.name,
                format_args!(
                    "proxy_register_shared_queue refused: name ({} bytes) too long or too many queues",
                    name.len()
                ),
            );
            return Ok(if name.len() > limits::MAX_QUEUE_NAME { BAD_ARGUMENT } else { INTERNAL_FAILURE });
        };
        mem::write_u32(&mut c, ret, id, "proxy_register_shared_queue")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_resolve_shared_queue", |mut c: Ctx<'_>,
                                               vp: i32,
                                               vn: i32,
                                               np: i32,
                                               nn: i32,
                                               ret: i32|
     -> Result<i32> {
        let vm = mem::read_str(&mut c, vp, vn, "proxy_resolve_shared_queue")?;
        let name = mem::read_str(&mut c, np, nn, "proxy_resolve_shared_queue")?;
        let st = c.data();
        let vm = if vm.is_empty() { st.core.vm_id.clone() } else { vm };
        match st.core.shared.resolve_queue(&vm, &name) {
            Some(id) => {
                mem::write_u32(&mut c, ret, id, "proxy_resolve_shared_queue")?;
                Ok(OK)
            }
            None => Ok(NOT_FOUND),
        }
    });
    wrap!(l, E, "proxy_enqueue_shared_queue", |mut c: Ctx<'_>, id: i32, vp: i32, vn: i32| -> Result<i32> {
        let value = mem::read(&mut c, vp, vn, "proxy_enqueue_shared_queue")?;
        let core = &c.data().core;
        let owner = match core.shared.enqueue(id as u32, value) {
            Enqueue::Ok(owner) => owner,
            Enqueue::NotFound => return Ok(NOT_FOUND),
            Enqueue::TooLarge => {
                limits::refused(
                    &core.name,
                    format_args!("proxy_enqueue_shared_queue refused: entry over queue {id}'s byte cap"),
                );
                return Ok(BAD_ARGUMENT);
            }
            Enqueue::Full => {
                limits::refused(
                    &core.name,
                    format_args!("proxy_enqueue_shared_queue refused: queue {id} is full (entries or bytes)"),
                );
                return Ok(INTERNAL_FAILURE);
            }
        };
        // proxy_on_queue_ready runs later on the owning root context (never re-entrantly into this store).
        if let Some(owner) = owner {
            if let Some(p) = owner.sink.upgrade() {
                p.queue_ready(owner.slot, owner.generation, owner.root_context, id as u32);
            }
        }
        Ok(OK)
    });
    wrap!(l, E, "proxy_dequeue_shared_queue", |mut c: Ctx<'_>, id: i32, rp: i32, rs: i32| -> Result<i32> {
        let item = match c.data().core.shared.dequeue(id as u32) {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(EMPTY),
            Err(()) => return Ok(NOT_FOUND),
        };
        mem::return_bytes(&mut c, &item, rp, rs, "proxy_dequeue_shared_queue")
    });
    Ok(())
}
