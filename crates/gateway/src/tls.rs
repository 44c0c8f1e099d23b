//! wss://: the TLS acceptor, from the user's PEM files or a self-signed certificate for
//! localhost that scfsim makes once and keeps in `data_dir`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up; each names the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("cannot read the TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the TLS certificate {cert} and key {key} do not go together: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("cannot write the generated certificate to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// A ready acceptor and where its certificate is, for the startup log.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub cert_path: PathBuf,
    /// True if scfsim made the certificate (clients must trust `cert_path`).
    pub generated: bool,
}

impl Tls {
    /// From `tls_cert`/`tls_key`, or a self-signed certificate kept in `data_dir/tls/`.
    pub fn load(cert: Option<&Path>, key: Option<&Path>, data_dir: &Path) -> Result<Tls, TlsError> {
        let (cert, key, generated) = match (cert, key) {
            (Some(cert), Some(key)) => (cert.to_path_buf(), key.to_path_buf(), false),
            _ => {
                let (cert, key) = self_signed(data_dir)?;
                (cert, key, true)
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .and_then(|iter| iter.collect())
            .map_err(|e| TlsError::Certificate {
                path: cert.clone(),
                message: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: cert,
                message: "no PEM CERTIFICATE block in the file".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| TlsError::Key {
            path: key.clone(),
            message: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // rustls speaks TLS 1.2 and 1.3 only: nothing older can be negotiated.
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| TlsError::Mismatch {
                cert: cert.clone(),
                key: key.clone(),
                message: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_path: cert,
            generated,
        })
    }
}

/// Made once, then reused, so a client that trusts it keeps working across restarts.
fn self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert = dir.join("localhost-cert.pem");
    let key = dir.join("localhost-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let made = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, text: String| {
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(path, text))
            .map_err(|source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            })
    };
    write(&key, made.signing_key.serialize_pem())?;
    write(&cert, made.cert.pem())?;
    Ok((cert, key))
}
