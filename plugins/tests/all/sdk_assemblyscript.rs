//! An unmodified plugin built with a public third-party SDK: the AssemblyScript proxy-wasm SDK
//! (`@solo-io/proxy-runtime` 0.1.8, ABI 0.2.0 marker), sources in plugins/guest/assemblyscript/.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::support::*;
use portico_plugins::{AbiVersion, FilterAction, Plugin, PluginSpec};

const WASM: &[u8] = include_bytes!("../data/add_header_as.wasm");

#[test]
fn assemblyscript_sdk_plugin_adds_configured_response_header() {
    let e = engine();
    let mut sp = PluginSpec::new("as-add-header", WASM.to_vec());
    sp.root_id = "add_header".into();
    sp.config = "from-portico".into();
    sp.instances = 1;
    let services = Arc::new(TestServices::default());
    let p = Plugin::load(&e, sp, services.clone()).unwrap();
    assert_eq!(p.abi_version(), AbiVersion::V0_2_0);
    assert!(p.unknown_imports().is_empty(), "{:?}", p.unknown_imports());
    for _ in 0..3 {
        let (info, mut h) = request("/");
        let mut s = p.new_stream(info).unwrap();
        assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
        let mut resp = vec![(":status".to_string(), "200".to_string())];
        assert_eq!(s.on_response_headers(&mut resp, true).unwrap(), FilterAction::Continue);
        assert_eq!(header(&resp, "hello"), Some("from-portico"));
        s.on_log().unwrap();
    }
}
