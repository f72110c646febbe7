//! The proxy-wasm header-map codec: any bytes a guest hands over decode to pairs or are refused, never a panic,
//! and what decodes encodes back to bytes that decode to the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_plugins::{deserialize_map, serialize_map};

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = deserialize_map(data) {
        let encoded = serialize_map(&pairs);
        assert_eq!(deserialize_map(&encoded).as_ref(), Some(&pairs), "round trip changed the pairs");
    }
});
