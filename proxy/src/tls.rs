//! TLS termination with rustls: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 offered by ALPN, and a certificate chosen
//! by the client's SNI name among those configured. Bad files are reported at start-up or reload with the path.

use crate::config::TlsFile;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// A TLS set-up problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {path}: {message}")]
pub struct TlsError {
    /// The file at fault.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError { path: path.display().to_string(), message: message.into() }
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|e| err(cert_path, format!("cannot read: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert_path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err(cert_path, "no certificate found in the PEM file"));
    }
    let key_pem = std::fs::read(key_path).map_err(|e| err(key_path, format!("cannot read: {e}")))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err(key_path, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| err(key_path, "no private key found in the PEM file"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| err(key_path, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| err(key_path, format!("key does not match {}: {e}", cert_path.display())))?;
    Ok(Arc::new(certified))
}

/// Picks the first SNI certificate valid for the requested name, else the default one.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let Ok(server_name) = ServerName::try_from(name) else {
            return Some(self.default.clone());
        };
        for candidate in &self.by_name {
            let Some(leaf) = candidate.cert.first() else { continue };
            if let Ok(parsed) = webpki::EndEntityCert::try_from(leaf) {
                if parsed.verify_is_valid_for_subject_name(&server_name).is_ok() {
                    return Some(candidate.clone());
                }
            }
        }
        Some(self.default.clone())
    }
}

/// Builds the acceptor for a listener.
pub fn acceptor(tls: &TlsFile) -> Result<TlsAcceptor, TlsError> {
    let default = load_pair(&tls.cert, &tls.key)?;
    let by_name = tls.sni.iter().map(|c| load_pair(&c.cert, &c.key)).collect::<Result<Vec<_>, _>>()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err(&tls.cert, format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
