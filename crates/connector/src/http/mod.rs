//! The HTTP layer shared by Tandem's HTTP connectors (cargo feature `http`).
//!
//! One [`HttpClient`] per connector instance carries what every HTTP connector needs
//! and none should write twice:
//!
//! - **HTTPS** with rustls and ring as the process's one crypto provider
//!   ([`install_crypto_provider`]). The server's certificate is checked against the
//!   system's roots, or only against the CA certificates in `ca_file`. There is no
//!   setting that turns the check off.
//! - **Timeouts** for connecting and for a whole request (`connect_timeout`, `timeout`).
//! - **Retries** with exponential backoff and jitter (backon), honouring `Retry-After` in
//!   both forms, bounded by `retry.attempts` and `retry.max_elapsed`. A request that may
//!   not be sent twice ([`Request::once`]) is retried only when the server certainly did
//!   not act on it: the connection was never made, or the answer was 429 or 503.
//! - **A rate limit** (`max_requests_per_second`), shared by every request of the client.
//! - **Authentication**: none, a bearer token, or a user and password sent as basic
//!   auth, or as HTTP Digest (RFC 7616: MD5, SHA-256, `qop=auth`) once the server
//!   answers with a Digest challenge.
//! - **Secret-safe errors**: server text is shortened, and dropped when it repeats the
//!   request; known secrets are masked wherever they appear ([`Redactor`]).
//!
//! The keys are read by [`HttpSettings::take_from`], the same for every HTTP connector.

mod client;
mod digest;
mod error;
mod observe;
mod redact;
mod retry;
mod settings;
#[cfg(feature = "http-testsupport")]
pub mod testing;
mod tls;

pub use client::{Auth, HttpClient, Reply, Request};
pub use error::HttpError;
pub use observe::{RequestEvent, RequestObserver, set_request_observer};
pub use redact::Redactor;
pub use retry::retry_after;
pub use settings::{HttpSettings, RetrySettings};
pub use tls::{client_builder, install_crypto_provider};

pub use reqwest::{Method, StatusCode, Url, header};
pub use secrecy::{ExposeSecret, SecretString};
