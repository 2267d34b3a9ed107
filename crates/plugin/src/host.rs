//! The host side: loading plugin libraries and wrapping them in [`Connector`].

// Loading a library, calling the functions it exports and reading the buffers it
// returns cannot be expressed without `unsafe`. Each unsafe block is one FFI call or
// pointer access whose contract is stated in `crate::abi`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use libloading::Library;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tandem_connector::{
    BuildContext, Capabilities, Connector, ConnectorError, ConnectorFactory, Cursor, Page, WriteOp,
    WriteOutcome, parse_settings,
};
use tandem_model::EntityKind;

use crate::abi::{self, AbiVersionFn, Buffer, HostApi, PluginVTable, VTableFn};
use crate::protocol::{Description, Init, InstanceInfo, Reply, Request};
use crate::{ABI_VERSION, PluginError, PluginInfo};

/// Builds connectors of `type = "plugin"`:
///
/// ```toml
/// [connectors.legacy]
/// type = "plugin"
/// path = "plugins/libtandem_legacy.so"   # relative to the config file's folder
/// settings = { dsn = "..." }             # handed to the plugin's own factory
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PluginFactory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSettings {
    path: PathBuf,
    #[serde(default = "no_settings")]
    settings: serde_json::Value,
}

fn no_settings() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl ConnectorFactory for PluginFactory {
    fn type_name(&self) -> &'static str {
        "plugin"
    }

    fn build(
        &self,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings: PluginSettings = parse_settings(settings)?;
        let path = context.resolve(&settings.path);
        Ok(Arc::new(PluginConnector::load(
            &path,
            settings.settings,
            context,
        )?))
    }
}

/// What a plugin library says about itself, without building a connector: name,
/// version, ABI version and connector type; `capabilities` is `None`.
pub fn describe(path: &Path) -> Result<PluginInfo, PluginError> {
    let library = load(path)?;
    Ok(library.info(None))
}

/// What a configured plugin says about itself, its connector built from `settings`
/// (the connector's config table minus `type`: `{"path": ..., "settings": {...}}`),
/// so `capabilities` (and with them the kinds) are known.
pub fn describe_configured(
    settings: serde_json::Value,
    context: &BuildContext,
) -> Result<PluginInfo, ConnectorError> {
    let settings: PluginSettings = parse_settings(settings)?;
    let path = context.resolve(&settings.path);
    let connector = PluginConnector::load(&path, settings.settings, context)?;
    Ok(connector.info().clone())
}

/// The plugin libraries loaded in this process, as their canonical paths. They stay
/// loaded until the process ends.
pub fn loaded() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = libraries()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    paths.sort();
    paths
}

// ----- libraries -----

/// A plugin library that passed the checks. Leaked: never unloaded.
struct Loaded {
    /// The path as it was given, for messages.
    path: PathBuf,
    vtable: &'static PluginVTable,
    description: Description,
}

impl Loaded {
    fn info(&self, capabilities: Option<Capabilities>) -> PluginInfo {
        PluginInfo {
            path: self.path.clone(),
            name: self.description.name.clone(),
            version: self.description.version.clone(),
            abi_version: self.description.abi_version,
            type_name: self.description.type_name.clone(),
            tandem_plugin_version: self.description.tandem_plugin_version.clone(),
            capabilities,
        }
    }

    /// A short name for messages: the file name.
    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Every library loaded so far, by canonical path.
fn libraries() -> &'static Mutex<HashMap<PathBuf, &'static Loaded>> {
    static LIBRARIES: OnceLock<Mutex<HashMap<PathBuf, &'static Loaded>>> = OnceLock::new();
    LIBRARIES.get_or_init(Mutex::default)
}

/// Loads and checks a library, or returns the one already loaded from that file.
fn load(path: &Path) -> Result<&'static Loaded, PluginError> {
    let canonical = match path.canonicalize() {
        Ok(canonical) => canonical,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PluginError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(PluginError::NotALibrary {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if !canonical.is_file() {
        return Err(PluginError::NotALibrary {
            path: path.to_path_buf(),
            reason: "not a file".to_owned(),
        });
    }
    // Held while loading, so that two threads loading one file load it once.
    let mut libraries = libraries().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(loaded) = libraries.get(&canonical) {
        return Ok(loaded);
    }
    let loaded = open(path, &canonical)?;
    libraries.insert(canonical, loaded);
    Ok(loaded)
}

fn open(path: &Path, canonical: &Path) -> Result<&'static Loaded, PluginError> {
    // SAFETY: loading a library runs its initialisers. That is the point of a plugin:
    // the user named this file as one, and nothing else of it runs until the ABI
    // version check below has passed.
    let library = unsafe { Library::new(canonical) }.map_err(|e| PluginError::NotALibrary {
        path: path.to_path_buf(),
        reason: loader_reason(&e, canonical),
    })?;
    // Never unloaded, not even when it fails the checks: it may have started threads
    // or registered thread-local destructors in its initialisers.
    let library: &'static Library = Box::leak(Box::new(library));

    // SAFETY: the symbol, if present, is the function of that name that
    // `export_connector!` generates, with the signature `AbiVersionFn`; a library
    // that exports the name with another type is not a Tandem plugin, which we
    // cannot detect beyond this point.
    let abi_version =
        unsafe { library.get::<AbiVersionFn>(abi::ABI_VERSION_SYMBOL) }.map_err(|_| {
            PluginError::MissingSymbol {
                path: path.to_path_buf(),
                symbol: abi::ABI_VERSION_SYMBOL,
            }
        })?;
    // SAFETY: as above; the function takes nothing and returns a constant.
    let found = unsafe { abi_version() };
    if found != ABI_VERSION {
        return Err(PluginError::AbiMismatch {
            path: path.to_path_buf(),
            found,
            expected: ABI_VERSION,
        });
    }

    // SAFETY: the ABI versions match, so the symbol has the type `VTableFn`.
    let vtable_fn = unsafe { library.get::<VTableFn>(abi::VTABLE_SYMBOL) }.map_err(|_| {
        PluginError::MissingSymbol {
            path: path.to_path_buf(),
            symbol: abi::VTABLE_SYMBOL,
        }
    })?;
    // SAFETY: as above; the function returns a pointer to a static of the library,
    // which is never unloaded, so the table lives as long as the process.
    let vtable: &'static PluginVTable = match unsafe { vtable_fn().as_ref() } {
        Some(vtable) => vtable,
        None => {
            return Err(PluginError::Protocol {
                path: path.to_path_buf(),
                message: format!("`{}` returned no function table", abi::VTABLE_SYMBOL),
            });
        }
    };

    let mut out = Buffer::EMPTY;
    // SAFETY: `out` is a valid buffer to write to.
    let status = unsafe { (vtable.describe)(&mut out) };
    let bytes = take(vtable, out);
    let description = if status == 0 {
        serde_json::from_slice::<Description>(&bytes).map_err(|e| PluginError::Protocol {
            path: path.to_path_buf(),
            message: format!("unreadable description: {e}"),
        })?
    } else {
        let error = decode::<()>(&bytes)
            .err()
            .unwrap_or_else(|| ConnectorError::fatal("the plugin failed to describe itself"));
        return Err(PluginError::Init {
            path: path.to_path_buf(),
            error,
        });
    };
    tracing::debug!(
        plugin = %path.display(),
        name = %description.name,
        version = %description.version,
        type_name = %description.type_name,
        "plugin loaded"
    );
    Ok(Box::leak(Box::new(Loaded {
        path: path.to_path_buf(),
        vtable,
        description,
    })))
}

/// The system loader's own words ("invalid ELF header"): libloading's message alone
/// is "dlopen failed", the reason is its source. The file name the loader repeats is
/// left out, since the message names the path already.
fn loader_reason(error: &libloading::Error, canonical: &Path) -> String {
    let reason = std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_else(|| error.to_string());
    let prefix = format!("{}: ", canonical.display());
    match reason.strip_prefix(&prefix) {
        Some(rest) if !rest.is_empty() => rest.to_owned(),
        _ => reason,
    }
}

/// Copies the bytes of a buffer the plugin returned, then frees it.
fn take(vtable: &PluginVTable, out: Buffer) -> Vec<u8> {
    let bytes = if out.ptr.is_null() || out.len == 0 {
        Vec::new()
    } else {
        // SAFETY: a non-null buffer from the plugin holds `len` initialised bytes
        // until it is freed, below.
        unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec()
    };
    // SAFETY: the buffer came from this plugin and is freed once.
    unsafe { (vtable.free_buffer)(out) };
    bytes
}

/// Reads a reply; an empty or unreadable one is a fatal error.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConnectorError> {
    if bytes.is_empty() {
        return Err(ConnectorError::fatal("the plugin returned no reply"));
    }
    serde_json::from_slice::<Reply<T>>(bytes)
        .map_err(|e| ConnectorError::fatal(format!("the plugin sent an unreadable reply: {e}")))?
        .into()
}

// ----- logs -----

/// What the host offers plugins: its log, up to the level its subscriber records for
/// the target `tandem_plugin`.
fn host_api() -> &'static HostApi {
    static HOST: OnceLock<HostApi> = OnceLock::new();
    HOST.get_or_init(|| {
        use tracing::Level;
        let max_level = if tracing::enabled!(target: "tandem_plugin", Level::TRACE) {
            abi::LEVEL_TRACE
        } else if tracing::enabled!(target: "tandem_plugin", Level::DEBUG) {
            abi::LEVEL_DEBUG
        } else if tracing::enabled!(target: "tandem_plugin", Level::INFO) {
            abi::LEVEL_INFO
        } else if tracing::enabled!(target: "tandem_plugin", Level::WARN) {
            abi::LEVEL_WARN
        } else if tracing::enabled!(target: "tandem_plugin", Level::ERROR) {
            abi::LEVEL_ERROR
        } else {
            abi::LEVEL_OFF
        };
        HostApi {
            max_level,
            log: host_log,
        }
    })
}

/// Re-emits a plugin's log record as a `tracing` event of the target
/// `tandem_plugin`, with the plugin-side target in the field `plugin`.
unsafe extern "C" fn host_log(
    level: u32,
    target_ptr: *const u8,
    target_len: usize,
    message_ptr: *const u8,
    message_len: usize,
) {
    // SAFETY: the plugin lends both strings for this call (abi::LogFn).
    let (target, message) = unsafe {
        (
            lossy(target_ptr, target_len),
            lossy(message_ptr, message_len),
        )
    };
    // A subscriber that panics must not unwind into the plugin.
    let result = panic::catch_unwind(AssertUnwindSafe(|| match level {
        abi::LEVEL_ERROR => tracing::error!(target: "tandem_plugin", plugin = %target, "{message}"),
        abi::LEVEL_WARN => tracing::warn!(target: "tandem_plugin", plugin = %target, "{message}"),
        abi::LEVEL_INFO => tracing::info!(target: "tandem_plugin", plugin = %target, "{message}"),
        abi::LEVEL_DEBUG => tracing::debug!(target: "tandem_plugin", plugin = %target, "{message}"),
        _ => tracing::trace!(target: "tandem_plugin", plugin = %target, "{message}"),
    }));
    if let Err(payload) = result
        && let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)))
    {
        std::mem::forget(again);
    }
}

/// # Safety
/// A non-null `ptr` must point to `len` bytes valid for the call.
unsafe fn lossy(ptr: *const u8, len: usize) -> String {
    if ptr.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: the caller's contract.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(ptr, len) }).into_owned()
}

// ----- connectors -----

/// A connector living in a plugin. The engine sees an ordinary [`Connector`].
pub struct PluginConnector {
    instance: Arc<Instance>,
    info: PluginInfo,
    capabilities: Capabilities,
}

/// An instance handle of a plugin; dropped in the plugin when the last call is done.
struct Instance {
    library: &'static Loaded,
    handle: NonNull<c_void>,
}

// SAFETY: the handle is only used through the plugin's function table, whose
// functions may be called from any thread, concurrently (abi::PluginVTable); the
// connector behind it is `Send + Sync`.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: the handle came from `init`; this is its only drop, and no call is
        // running, since every call holds an `Arc` of the instance.
        unsafe { (self.library.vtable.drop_instance)(self.handle.as_ptr()) };
    }
}

impl Instance {
    /// One request, on the calling thread.
    fn call<T: DeserializeOwned>(&self, request: &[u8]) -> Result<T, ConnectorError> {
        let vtable = self.library.vtable;
        let mut out = Buffer::EMPTY;
        // SAFETY: the handle is live (see `Drop`), `request` is valid for the call and
        // `out` is a valid buffer to write to.
        let status = unsafe {
            (vtable.call)(
                self.handle.as_ptr(),
                request.as_ptr(),
                request.len(),
                &mut out,
            )
        };
        let bytes = take(vtable, out);
        decode(&bytes).map_err(|error| match error {
            ConnectorError::Fatal { message } if bytes.is_empty() => {
                ConnectorError::fatal(format!("{message} (status {status})"))
            }
            error => error,
        })
    }
}

impl PluginConnector {
    /// Loads the library at `path` (or reuses it), then builds its connector from
    /// `settings`, with relative paths resolving against `context`.
    pub fn load(
        path: &Path,
        settings: serde_json::Value,
        context: &BuildContext,
    ) -> Result<PluginConnector, PluginError> {
        let library = load(path)?;
        let init = serde_json::to_vec(&Init {
            settings,
            base_dir: context.base_dir.clone(),
        })
        .map_err(|e| PluginError::Protocol {
            path: path.to_path_buf(),
            message: format!("cannot encode the settings: {e}"),
        })?;
        let mut out = Buffer::EMPTY;
        // SAFETY: the host API lives as long as the process, `init` is valid for the
        // call and `out` is a valid buffer to write to.
        let handle =
            unsafe { (library.vtable.init)(host_api(), init.as_ptr(), init.len(), &mut out) };
        let bytes = take(library.vtable, out);
        let reply = decode::<()>(&bytes);
        let handle = match (NonNull::new(handle), reply) {
            (Some(handle), Ok(())) => handle,
            (handle, reply) => {
                let error = reply.err().unwrap_or_else(|| {
                    ConnectorError::fatal("the plugin returned no connector and no error")
                });
                if let Some(handle) = handle {
                    // SAFETY: a handle from `init`, never used.
                    unsafe { (library.vtable.drop_instance)(handle.as_ptr()) };
                }
                return Err(match error {
                    ConnectorError::Config { message } => PluginError::Settings {
                        path: path.to_path_buf(),
                        message,
                    },
                    error => PluginError::Init {
                        path: path.to_path_buf(),
                        error,
                    },
                });
            }
        };
        let instance = Arc::new(Instance { library, handle });
        let info: InstanceInfo = instance
            .call(&encode(&Request::Info).map_err(|error| PluginError::Init {
                path: path.to_path_buf(),
                error,
            })?)
            .map_err(|error| PluginError::Init {
                path: path.to_path_buf(),
                error,
            })?;
        Ok(PluginConnector {
            info: library.info(Some(info.capabilities.clone())),
            capabilities: info.capabilities,
            instance,
        })
    }

    /// What the plugin says about itself, capabilities included.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Sends a request from a blocking thread of the host's runtime (or on this
    /// thread, outside of tokio), so the host's runtime goes on meanwhile.
    async fn request<T>(&self, request: Request) -> Result<T, ConnectorError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let bytes = encode(&request)?;
        let instance = Arc::clone(&self.instance);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || instance.call::<T>(&bytes))
                .await
                .unwrap_or_else(|e| {
                    Err(ConnectorError::fatal(format!(
                        "the call to the plugin did not finish: {e}"
                    )))
                }),
            Err(_) => instance.call::<T>(&bytes),
        };
        result.map_err(|error| self.name_fatal(error))
    }

    /// Fatal errors name the plugin; typed ones stay as they are.
    fn name_fatal(&self, error: ConnectorError) -> ConnectorError {
        match error {
            ConnectorError::Fatal { message } => {
                ConnectorError::fatal(format!("{message} ({})", self.instance.library.file_name()))
            }
            error => error,
        }
    }
}

fn encode(request: &Request) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(request)
        .map_err(|e| ConnectorError::fatal(format!("cannot encode the request: {e}")))
}

impl fmt::Debug for PluginConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginConnector")
            .field("path", &self.info.path)
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("type_name", &self.info.type_name)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Connector for PluginConnector {
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        self.request(Request::Check).await
    }

    async fn read(
        &self,
        kind: EntityKind,
        cursor: Option<&Cursor>,
    ) -> Result<Page, ConnectorError> {
        self.request(Request::Read {
            kind,
            cursor: cursor.cloned(),
        })
        .await
    }

    async fn write(
        &self,
        kind: EntityKind,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let count = ops.len();
        let replies: Vec<Reply<tandem_connector::Written>> =
            self.request(Request::Write { kind, ops }).await?;
        if replies.len() != count {
            return Err(self.name_fatal(ConnectorError::fatal(format!(
                "the plugin answered {} outcomes for {count} operations",
                replies.len()
            ))));
        }
        Ok(replies.into_iter().map(Into::into).collect())
    }
}
