//! Connectors loaded at run time.
//!
//! A plugin is a `cdylib` whose one-line wrapper crate exports an ordinary connector
//! crate with [`export_connector!`], so the same connector can be compiled into
//! `tandem` or shipped as a plugin. The host side ([`PluginFactory`], config
//! `type = "plugin"`) loads the library and wraps it in the same
//! [`Connector`](tandem_connector::Connector) trait as a built-in connector: the engine
//! cannot tell them apart.
//!
//! # The boundary
//!
//! Host and plugin are separately compiled Rust programs (each with its own copy of
//! `std`, `tokio`, `tracing`, ...), so nothing Rust-specific crosses between them:
//!
//! 1. The host loads the library and calls `tandem_plugin_abi_version() -> u32` before
//!    anything else; it must equal [`ABI_VERSION`].
//! 2. `tandem_plugin_vtable()` returns a [`PluginVTable`](abi::PluginVTable) of
//!    `extern "C"` functions that exchange JSON bytes ([`protocol`]): `describe`,
//!    `init` (settings in, instance handle out), `call` (one request in, one reply
//!    out), `free_buffer` and `drop_instance`.
//! 3. Bytes a plugin returns live in a [`Buffer`](abi::Buffer) the plugin allocated
//!    and the host hands back to `free_buffer`; bytes the host sends are only borrowed
//!    for the duration of the call.
//! 4. Every entry point catches panics: a panicking connector answers with
//!    [`ConnectorError::Fatal`](tandem_connector::ConnectorError::Fatal)
//!    `"plugin panicked: ..."` and the host keeps running.
//! 5. The plugin runs its connector on its own tokio runtime; the host calls it from
//!    `spawn_blocking`, so the host's runtime is never blocked.
//! 6. The plugin's `tracing` events are forwarded to the host through the log callback
//!    in [`HostApi`](abi::HostApi) and appear under the target `tandem_plugin`.
//! 7. A loaded library is never unloaded: code and statics of a Rust library cannot be
//!    proven unused (thread-locals, runtime threads), and unloading buys nothing in a
//!    process that runs one sync.
//!
//! The messages are plain JSON documents, and the same protocol runs over a child
//! process's stdin and stdout ([`process`], `type = "process"`) for connectors written
//! in any language: docs/plugin-protocol.md specifies it.

pub mod abi;
pub mod export;
mod host;
pub mod process;
pub mod protocol;

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tandem_connector::{Capabilities, ConnectorError};
use tandem_model::EntityKind;

pub use host::{PluginConnector, PluginFactory, describe, describe_configured, loaded};
pub use process::{ProcessConnector, ProcessFactory};

/// The version of the plugin boundary: the function table and the JSON messages. A
/// plugin built against another version is refused with a message saying so. Bumped
/// whenever either changes incompatibly.
pub const ABI_VERSION: u32 = 1;

/// The version of this crate, named in messages about plugins built against another
/// ABI version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The library file.
    pub path: PathBuf,
    /// The package that exported the plugin, e.g. `tandem-connector-file-plugin`.
    pub name: String,
    /// That package's version.
    pub version: String,
    /// The plugin ABI it speaks.
    pub abi_version: u32,
    /// The `type` of the connector inside (its factory's `type_name`), e.g. `file`.
    pub type_name: String,
    /// The version of `tandem-plugin` the plugin was built with.
    pub tandem_plugin_version: String,
    /// The connector's capabilities. Known only once the connector is built from its
    /// settings: `None` from [`describe`], `Some` from [`describe_configured`].
    pub capabilities: Option<Capabilities>,
}

impl PluginInfo {
    /// The record kinds the connector holds, when known.
    pub fn kinds(&self) -> Option<&[EntityKind]> {
        self.capabilities.as_ref().map(|c| c.kinds.as_slice())
    }
}

/// Why a plugin could not be loaded or started. Every message names the library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {} does not exist", .path.display())]
    NotFound { path: PathBuf },
    #[error("plugin {} is not a loadable library: {reason}", .path.display())]
    NotALibrary { path: PathBuf, reason: String },
    #[error(
        "plugin {} does not export the symbol `{symbol}`: is this a Tandem plugin? It must \
         be built with tandem_plugin::export_connector!",
        .path.display()
    )]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    #[error(
        "plugin {} speaks plugin ABI version {found}, this tandem speaks version {expected}: \
         rebuild the plugin against tandem-plugin {}",
        .path.display(),
        VERSION
    )]
    AbiMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// The plugin's factory refused its settings; `message` is its own (usually
    /// "`key`: what is wrong").
    #[error("plugin {} rejected its settings: {message}", .path.display())]
    Settings { path: PathBuf, message: String },
    /// The plugin failed to describe itself or to build its connector for another
    /// reason than its settings (it panicked, say).
    #[error("plugin {} failed to start: {error}", .path.display())]
    Init {
        path: PathBuf,
        error: ConnectorError,
    },
    /// The plugin broke the protocol (no function table, unreadable JSON, ...).
    #[error("plugin {} does not follow the plugin protocol: {message}", .path.display())]
    Protocol { path: PathBuf, message: String },
}

impl PluginError {
    pub fn path(&self) -> &Path {
        match self {
            PluginError::NotFound { path }
            | PluginError::NotALibrary { path, .. }
            | PluginError::MissingSymbol { path, .. }
            | PluginError::AbiMismatch { path, .. }
            | PluginError::Settings { path, .. }
            | PluginError::Init { path, .. }
            | PluginError::Protocol { path, .. } => path,
        }
    }
}

/// Load errors are configuration errors. They follow the "`key`: message" form of
/// [`tandem_connector::parse_settings`] so that the config loader can name the key:
/// problems with the library point at `path`, settings the plugin refused at
/// `settings.<key>`.
impl From<PluginError> for ConnectorError {
    fn from(error: PluginError) -> ConnectorError {
        let message = match &error {
            PluginError::Settings { path, message } => {
                match message
                    .strip_prefix('`')
                    .and_then(|rest| rest.split_once("`: "))
                {
                    Some((key, rest)) if !key.is_empty() => format!(
                        "`settings.{key}`: {rest} (rejected by plugin {})",
                        path.display()
                    ),
                    _ => format!("`settings`: {error}"),
                }
            }
            PluginError::NotFound { .. }
            | PluginError::NotALibrary { .. }
            | PluginError::MissingSymbol { .. }
            | PluginError::AbiMismatch { .. } => format!("`path`: {error}"),
            PluginError::Init { .. } | PluginError::Protocol { .. } => error.to_string(),
        };
        ConnectorError::Config { message }
    }
}

/// The plugin libraries in `dir`: files ending with this platform's library suffix
/// (`.so`, `.dylib`, `.dll`), sorted. Nothing is loaded; pass each to [`describe`].
pub fn discover(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_library = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX));
        if is_library && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_point_at_the_path_key() {
        let e: ConnectorError = PluginError::NotFound {
            path: "/p/libx.so".into(),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "configuration error: `path`: plugin /p/libx.so does not exist"
        );
    }

    #[test]
    fn refused_settings_point_at_the_setting() {
        let e: ConnectorError = PluginError::Settings {
            path: "/p/libx.so".into(),
            message: "`formt`: unknown field `formt`, expected `path` or `format`".into(),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "configuration error: `settings.formt`: unknown field `formt`, expected `path` or \
             `format` (rejected by plugin /p/libx.so)"
        );
        let e: ConnectorError = PluginError::Settings {
            path: "/p/libx.so".into(),
            message: "missing field `path`".into(),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "configuration error: `settings`: plugin /p/libx.so rejected its settings: missing \
             field `path`"
        );
    }

    #[test]
    fn abi_mismatch_says_what_to_do() {
        let e = PluginError::AbiMismatch {
            path: "/p/libx.so".into(),
            found: 999,
            expected: ABI_VERSION,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "plugin /p/libx.so speaks plugin ABI version 999, this tandem speaks version 1: \
                 rebuild the plugin against tandem-plugin {VERSION}"
            )
        );
    }
}
