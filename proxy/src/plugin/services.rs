//! What Portico gives plugins beyond the ABI's defaults: HTTP callouts (`proxy_http_call`) to a named upstream
//! group, sent through that group's pool and balancing like any request, and the node id.

use crate::body::RequestBody;
use crate::server::Shared;
use crate::upstream::pool::ConnectionChoice;
use bytes::Bytes;
use http_body_util::BodyExt;
use portico_plugins::{HostServices, HttpCallRejected, HttpCallRequest, HttpCallResponse};
use std::sync::{OnceLock, Weak};

/// [`HostServices`] backed by the running proxy. Holds the shared state weakly: plugins live inside it.
#[derive(Debug, Default)]
pub struct ProxyServices {
    shared: OnceLock<Weak<Shared>>,
}

impl ProxyServices {
    /// Connects the services to the proxy once its shared state exists.
    pub fn attach(&self, shared: Weak<Shared>) {
        let _ = self.shared.set(shared);
    }
}

impl HostServices for ProxyServices {
    fn http_call(&self, request: HttpCallRequest) -> Result<(), HttpCallRejected> {
        let shared = self
            .shared
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| HttpCallRejected::Internal("proxy is shutting down".into()))?;
        let upstream = shared
            .snapshot
            .load()
            .upstreams
            .get(&request.upstream)
            .cloned()
            .ok_or_else(|| HttpCallRejected::UnknownUpstream(request.upstream.clone()))?;
        // Never block inside a plugin callback: the call runs on its own task and answers through the responder.
        tokio::spawn(async move {
            let HttpCallRequest { headers, body, timeout, responder, .. } = request;
            let response = async {
                let index = upstream.pick(&[])?;
                let mut method = http::Method::GET;
                let mut path = "/".to_string();
                let mut builder = http::Request::builder();
                for (name, value) in &headers {
                    match name.as_str() {
                        ":method" => method = http::Method::from_bytes(value.as_bytes()).ok()?,
                        ":path" => path.clone_from(value),
                        ":authority" => builder = builder.header(http::header::HOST, value.as_str()),
                        n if n.starts_with(':') => {}
                        n => builder = builder.header(n, value.as_str()),
                    }
                }
                let (head, ()) = builder.method(method).uri(path).body(()).ok()?.into_parts();
                let body = RequestBody::Full(Some(body));
                let answer =
                    tokio::time::timeout(timeout, upstream.send(index, &head, &[], body, ConnectionChoice::Pooled))
                        .await
                        .ok()?
                        .ok()?;
                let mut answer = answer;
                crate::body::fields_as_map(&mut answer);
                let (parts, body) = answer.into_parts();
                // Read no more than a plugin may be handed: a larger answer is a failed callout.
                let limited = http_body_util::Limited::new(body, portico_plugins::limits::MAX_HTTP_CALL_RESPONSE_BODY);
                let body: Bytes = match tokio::time::timeout(timeout, limited.collect()).await.ok()? {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) => {
                        tracing::warn!(upstream = %upstream.name(), error = %e, "plugin callout response refused");
                        return None;
                    }
                };
                let mut headers = vec![(":status".to_string(), parts.status.as_str().to_string())];
                headers.extend(
                    parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())),
                );
                Some(HttpCallResponse { headers, body, trailers: Vec::new() })
            }
            .await;
            if let Err(e) = responder.complete(response) {
                tracing::warn!(error = %e, "plugin failed handling its callout response");
            }
        });
        Ok(())
    }

    fn node_id(&self) -> String {
        std::env::var("HOSTNAME").unwrap_or_else(|_| "portico".into())
    }
}
