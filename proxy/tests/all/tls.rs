//! TLS termination: certificate chosen by SNI, TLS 1.2 and 1.3, HTTP/2 by ALPN, clear errors for bad files.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Certs {
    pub(crate) default_der: CertificateDer<'static>,
    other_der: CertificateDer<'static>,
    pub(crate) config: String,
}

fn write_pair(dir: &Path, name: &str) -> Result<CertificateDer<'static>, Box<dyn std::error::Error + Send + Sync>> {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
    std::fs::write(dir.join(format!("{name}.crt")), certified.cert.pem())?;
    std::fs::write(dir.join(format!("{name}.key")), certified.key_pair.serialize_pem())?;
    Ok(certified.cert.der().clone())
}

pub(crate) fn tls_setup(dir: &Path, upstream: SocketAddr) -> Result<Certs, Box<dyn std::error::Error + Send + Sync>> {
    let default_der = write_pair(dir, "default.test")?;
    let other_der = write_pair(dir, "other.test")?;
    let d = dir.display();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"
tls = {{ cert = "{d}/default.test.crt", key = "{d}/default.test.key", sni = [{{ cert = "{d}/other.test.crt", key = "{d}/other.test.key" }}] }}

[[upstream]]
name = "app"
endpoints = ["{upstream}"]
"#
    );
    Ok(Certs { default_der, other_der, config })
}

pub(crate) async fn handshake(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(connector.connect(ServerName::try_from(sni.to_string())?, tcp).await?)
}

#[tokio::test]
async fn certificate_is_chosen_by_sni_and_h2_is_negotiated() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let certs = tls_setup(dir.path(), upstream.addr)?;
    let p = Portico::start(&certs.config).await;
    let web = p.addr("web").await;
    let roots = [certs.default_der.clone(), certs.other_der.clone()];

    for (sni, expected) in [("other.test", &certs.other_der), ("default.test", &certs.default_der)] {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let tls = handshake(web, sni, &roots, version, &[b"h2", b"http/1.1"]).await?;
            let (_, session) = tls.get_ref();
            let presented = session.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
            assert_eq!(presented, expected, "{sni} got the wrong certificate");
            assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        }
    }

    // A whole HTTP/2 exchange over TLS.
    let tls = handshake(web, "other.test", &roots, &rustls::version::TLS13, &[b"h2"]).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("https://other.test/secure").body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await?.to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(echo["path"], "/secure");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["host"], "other.test");

    // HTTP/1.1 when the client offers only that.
    let tls = handshake(web, "default.test", &roots, &rustls::version::TLS12, &[b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    Ok(())
}

#[tokio::test]
async fn a_bad_key_is_refused_at_start_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certs = tls_setup(dir.path(), "127.0.0.1:9".parse()?)?;
    std::fs::write(
        dir.path().join("other.test.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    )?;
    let config = portico::config::parse(&certs.config).map_err(|e| format!("{e:?}"))?;
    let error = match portico::Server::start(config, Duration::from_secs(1)).await {
        Ok(_) => return Err("started with a broken key".into()),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("other.test.key"), "{error}");
    assert!(error.contains("listener web"), "{error}");

    // Swapping the default certificate's key for the other one's: key and certificate do not match.
    std::fs::copy(dir.path().join("default.test.key"), dir.path().join("other.test.key"))?;
    let config = portico::config::parse(&certs.config).map_err(|e| format!("{e:?}"))?;
    let error = match portico::Server::start(config, Duration::from_secs(1)).await {
        Ok(_) => return Err("started with a mismatched key".into()),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("does not match"), "{error}");
    Ok(())
}
