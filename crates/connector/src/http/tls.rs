//! TLS: the one crypto provider, `ca_file`, and errors that say what to check.

use std::error::Error as StdError;
use std::path::Path;

use rustls::CertificateError;

use crate::ConnectorError;

/// Installs ring as the process's rustls crypto provider, unless one is installed
/// already. rustls allows one provider per process and reqwest (built with
/// `rustls-no-provider`) panics without one, so every HTTP client is built after this.
pub fn install_crypto_provider() {
    // Err means a provider is installed already (ours, or the host program's): keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder with the crypto provider installed; the only way
/// Tandem builds HTTP clients.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// The CA certificates of a `ca_file` (PEM, one or more).
pub(crate) fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ConnectorError> {
    let pem = std::fs::read(path).map_err(|e| {
        ConnectorError::config(format!("`ca_file`: cannot read {}: {e}", path.display()))
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
        ConnectorError::config(format!(
            "`ca_file`: {} is not a PEM file of certificates",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(ConnectorError::config(format!(
            "`ca_file`: {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls error somewhere in `err`'s chain of causes. reqwest wraps it in hyper's
/// errors, boxed errors and io errors, and both a box and an io error hide the error
/// they hold from `source()`, so each link is also opened.
fn rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = held_rustls(e, 3) {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

fn held_rustls<'a>(e: &'a (dyn StdError + 'static), depth: u8) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    held_rustls(inner, depth.checked_sub(1)?)
}

const PLAIN_HTTP: &str =
    "the server did not answer in TLS: does it serve plain http:// on this port? (check `url`)";

/// What went wrong with TLS and what to check, if `err` is a TLS failure.
pub(crate) fn diagnose(err: &reqwest::Error, ca_file: Option<&Path>) -> Option<String> {
    let Some(tls) = rustls_error(err) else {
        // tokio-rustls reports a server that hangs up mid-handshake as a bare io error.
        return format!("{err:?}")
            .contains("tls handshake eof")
            .then(|| PLAIN_HTTP.to_owned());
    };
    let trusted = match ca_file {
        Some(path) => format!("the CA in `ca_file` ({})", path.display()),
        None => "the system's trusted CAs".to_owned(),
    };
    Some(match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by {trusted}; if it comes from a \
                 private CA, set `ca_file` to that CA's certificate (PEM)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate is not valid for the host in `url`: use a host name \
                 the certificate names (check `url` and the server's certificate, and `ca_file`)"
                    .to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired (renew it on the server)".to_owned()
            }
            other => format!(
                "the server's certificate was refused ({other:?}); checked against {trusted} \
                 (`ca_file`)"
            ),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            PLAIN_HTTP.to_owned()
        }
        other => format!("TLS failed ({other}); check `url` and `ca_file`"),
    })
}
