//! The request-head guard and checks. The smuggling guard must frame a byte stream the same way however the
//! reads split it (first input byte: the read size), and never panic; a head that parses and passes the
//! reverse listener's checks has at most one Host, a Host on HTTP/1.1, and no h2c upgrade left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::listen::guard::{GuardFlag, SmuggleGuard};
use std::sync::Arc;

fn frame(pieces: &[&[u8]]) -> (u64, u64) {
    let flag = Arc::new(GuardFlag::default());
    let mut guard = SmuggleGuard::new((), flag.clone());
    for piece in pieces {
        guard.observe(piece);
    }
    (guard.heads(), flag.first_refused())
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let whole = frame(&[bytes]);
    let pieces: Vec<&[u8]> = bytes.chunks(usize::from(split).max(1)).collect();
    assert_eq!(whole, frame(&pieces), "framing depends on how the reads split the stream");

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(bytes), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let mut builder = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(if req.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else { return };
    let (mut parts, ()) = request.into_parts();
    if portico::forward::request_head::check_reverse(&mut parts).is_ok() {
        assert!(parts.headers.get_all(http::header::HOST).iter().count() <= 1);
        if parts.version == http::Version::HTTP_11 {
            assert!(parts.headers.contains_key(http::header::HOST), "HTTP/1.1 passed without Host");
        }
        assert!(!parts.headers.contains_key("http2-settings"));
        let upgrade = parts.headers.get_all(http::header::UPGRADE).iter();
        assert!(!upgrade
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c")));
        assert_ne!(parts.method, http::Method::CONNECT);
    }
});
