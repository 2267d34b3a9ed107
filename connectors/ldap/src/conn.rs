//! The connection to the directory: TLS, bind, reconnects, and errors for people.

use std::sync::Arc;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::ExposeSecret;
use tandem_connector::ConnectorError;

use crate::settings::Settings;

/// LDAP result codes the connector tells apart (RFC 4511, appendix A; RFC 4528).
pub mod rc {
    pub const SUCCESS: u32 = 0;
    pub const TIME_LIMIT_EXCEEDED: u32 = 3;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS: u32 = 50;
    pub const BUSY: u32 = 51;
    pub const UNAVAILABLE: u32 = 52;
    pub const ENTRY_ALREADY_EXISTS: u32 = 68;
    pub const ASSERTION_FAILED: u32 = 122;
    /// RFC 4533 e-syncRefreshRequired: the cookie is too old, start over.
    pub const SYNC_REFRESH_REQUIRED: u32 = 4096;
}

/// One connection, made on first use and again after it broke.
#[derive(Debug)]
pub struct Conn {
    url: String,
    starttls: bool,
    bind: Option<(String, secrecy::SecretString)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: std::time::Duration,
    handle: tokio::sync::Mutex<Option<Ldap>>,
}

impl Conn {
    pub fn new(s: &Settings) -> Result<Conn, ConnectorError> {
        let tls = match &s.ca_file {
            Some(path) => Some(Arc::new(tls_config(path)?)),
            None => None,
        };
        Ok(Conn {
            url: s.url.clone(),
            starttls: s.starttls,
            bind: s.bind.clone(),
            tls,
            timeout: s.timeout,
            handle: tokio::sync::Mutex::new(None),
        })
    }

    /// A handle on the connection, connecting and binding first when there is none.
    pub async fn ldap(&self) -> Result<Ldap, ConnectorError> {
        let mut guard = self.handle.lock().await;
        if let Some(ldap) = guard.as_mut()
            && !ldap.is_closed()
        {
            return Ok(ldap.clone());
        }
        let ldap = self.connect().await?;
        *guard = Some(ldap.clone());
        Ok(ldap)
    }

    /// Forgets a connection that failed, so that the next call connects again.
    pub async fn reset(&self) {
        *self.handle.lock().await = None;
    }

    async fn connect(&self) -> Result<Ldap, ConnectorError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if let Some(config) = &self.tls {
            settings = settings.set_config(config.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| self.error(e, &format!("connecting to {}", self.url)))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.timeout);
        if let Some((dn, password)) = &self.bind {
            let result = ldap
                .simple_bind(dn, password.expose_secret())
                .await
                .map_err(|e| self.error(e, &format!("binding as {dn}")))?;
            if result.rc != rc::SUCCESS {
                return Err(match result.rc {
                    rc::INVALID_CREDENTIALS => ConnectorError::Auth {
                        message: format!(
                            "{} refused the bind DN {dn} with its password (invalid credentials); check `bind_dn` and `password`",
                            self.url
                        ),
                    },
                    _ => self.result_error(&result, None, &format!("binding as {dn}")),
                });
            }
        }
        Ok(ldap)
    }

    /// Server text with the password masked, should a server ever echo it.
    pub fn mask(&self, text: &str) -> String {
        match &self.bind {
            Some((_, pw)) if !pw.expose_secret().is_empty() => {
                text.replace(pw.expose_secret(), "***")
            }
            _ => text.to_owned(),
        }
    }

    /// An error of the client library, while doing `what`.
    pub fn error(&self, e: LdapError, what: &str) -> ConnectorError {
        if let LdapError::Io { source } = &e
            && let Some(tls) = source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            // A certificate that is not trusted fails the same way on every try.
            return ConnectorError::fatal(format!(
                "LDAP {}: {what}: TLS failed ({tls}); check `ca_file` and that the server's certificate names the host of `url`",
                self.url
            ));
        }
        match e {
            LdapError::LdapResult { result } => self.result_error(&result, None, what),
            LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::Timeout { .. }
            | LdapError::EndOfStream => ConnectorError::transient(format!(
                "LDAP {}: {what}: {}",
                self.url,
                self.mask(&e.to_string())
            )),
            LdapError::Rustls { .. } | LdapError::DNSName { .. } => ConnectorError::fatal(format!(
                "LDAP {}: {what}: TLS failed ({}); check `ca_file` and that the server's certificate names the host of `url`",
                self.url,
                self.mask(&e.to_string())
            )),
            other => ConnectorError::fatal(format!(
                "LDAP {}: {what}: {}",
                self.url,
                self.mask(&other.to_string())
            )),
        }
    }

    /// A result code that is not success, for record `id` (when the operation was on one).
    pub fn result_error(&self, r: &LdapResult, id: Option<&str>, what: &str) -> ConnectorError {
        let text = self.mask(r.text.trim());
        let detail = if text.is_empty() {
            format!("result code {}", r.rc)
        } else {
            format!("result code {}: {text}", r.rc)
        };
        let message = format!("LDAP {}: {what}: {detail}", self.url);
        match (r.rc, id) {
            (rc::SIZE_LIMIT_EXCEEDED, _) => ConnectorError::config(format!(
                "{message}: the server's size limit stops the listing before its end; let the bind DN read every entry (OpenLDAP: `limits dn.exact=\"<bind_dn>\" size=unlimited`, which also lifts the total of paged results)"
            )),
            (rc::ASSERTION_FAILED, Some(id)) => ConnectorError::Conflict { id: id.to_owned() },
            (rc::NO_SUCH_OBJECT, Some(id)) => ConnectorError::NotFound { id: id.to_owned() },
            (rc::INVALID_CREDENTIALS, _) | (rc::INSUFFICIENT_ACCESS, _) => {
                ConnectorError::Auth { message }
            }
            (rc::BUSY, _)
            | (rc::UNAVAILABLE, _)
            | (rc::TIME_LIMIT_EXCEEDED, _)
            | (11, _)
            | (80, _) => ConnectorError::transient(message),
            // Schema and naming violations, syntax, constraints, existing entry.
            (16..=21 | 34 | 64..=69, Some(id)) => ConnectorError::invalid(Some(id), message),
            (16..=21 | 34 | 64..=69, None) => ConnectorError::invalid(None, message),
            _ => ConnectorError::fatal(message),
        }
    }
}

/// A rustls client config (ring) that trusts only the certificates of `ca_file`.
fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, ConnectorError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConnectorError::config(format!(
                "`ca_file` {}: no PEM certificates could be read ({e})",
                path.display()
            ))
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            ConnectorError::config(format!(
                "`ca_file` {}: a certificate was refused ({e})",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(ConnectorError::config(format!(
            "`ca_file` {} holds no certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::fatal(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Conn {
    /// The server, for messages.
    pub fn describe(&self) -> String {
        self.url.clone()
    }
}
