//! A plain Pingora reverse proxy for the side-by-side benchmark: every request goes to one origin over a
//! pooled keep-alive connection; no filters, no logging.
//!
//!   pingora-bench-proxy LISTEN ORIGIN THREADS      e.g. 127.0.0.1:18085 127.0.0.1:18080 2

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Proxy {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin.as_str(), false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora-bench-proxy LISTEN ORIGIN [THREADS]");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let conf = ServerConf { threads, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Proxy { origin });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
