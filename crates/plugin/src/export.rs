//! The plugin side: what [`export_connector!`](crate::export_connector) generates
//! calls into here.
//!
//! Everything in this module runs inside the plugin library, which carries its own
//! copy of this crate (and of `std`, `tokio` and `tracing`): the statics below are the
//! plugin's, one set per loaded library.

// The `extern "C"` entry points of the function table take raw pointers from the host
// and hand out raw allocations; that cannot be expressed without `unsafe`. Each unsafe
// block is one pointer access whose contract is stated in `crate::abi`.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};

use crate::abi::{self, Buffer, HostApi, PluginVTable};
use crate::protocol::{self, Description, Init, InstanceInfo, Reply, Request};

pub use tandem_connector::ConnectorFactory;
use tandem_connector::{BuildContext, Connector, ConnectorError};

/// What the export macro knows about the plugin it exports.
#[derive(Debug, Clone, Copy)]
pub struct Plugin {
    /// The exporting package's name and version (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION`
    /// of the wrapper crate).
    pub name: &'static str,
    pub version: &'static str,
    /// Makes the factory; called once, on first use, with panics caught.
    pub make_factory: fn() -> Box<dyn ConnectorFactory>,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();
static FACTORY: OnceLock<Box<dyn ConnectorFactory>> = OnceLock::new();
static HOST: OnceLock<HostApi> = OnceLock::new();
static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

static VTABLE: PluginVTable = PluginVTable {
    describe,
    init,
    call,
    free_buffer,
    drop_instance,
};

/// Registers the plugin and returns the function table; the body of the generated
/// `tandem_plugin_vtable`. Not for direct use.
#[doc(hidden)]
pub fn vtable(plugin: Plugin) -> *const PluginVTable {
    let result = panic::catch_unwind(|| {
        let _ = PLUGIN.set(plugin);
        install_panic_hook();
    });
    match result {
        Ok(()) => &VTABLE,
        Err(payload) => {
            drop_payload(payload);
            // The host reports a plugin without a function table.
            std::ptr::null()
        }
    }
}

/// The connector behind an instance handle.
struct Instance {
    connector: Arc<dyn Connector>,
}

// ----- entry points: each one catches every panic -----

unsafe extern "C" fn describe(out: *mut Buffer) -> i32 {
    let result = guarded(|| {
        let plugin = plugin()?;
        let factory = factory()?;
        Ok(Description {
            name: plugin.name.to_owned(),
            version: plugin.version.to_owned(),
            abi_version: crate::ABI_VERSION,
            type_name: factory.type_name().to_owned(),
            tandem_plugin_version: crate::VERSION.to_owned(),
        })
    });
    let (status, bytes) = match result {
        Ok(description) => match serde_json::to_vec(&description) {
            Ok(bytes) => (0, bytes),
            Err(e) => encode_reply::<()>(Err(ConnectorError::fatal(format!(
                "cannot encode the plugin description: {e}"
            )))),
        },
        Err(error) => encode_reply::<()>(Err(error)),
    };
    // SAFETY: the host passes a valid `Buffer` to write to, or null (see `put`).
    unsafe { put(out, bytes) };
    status
}

unsafe extern "C" fn init(
    host: *const HostApi,
    init_ptr: *const u8,
    init_len: usize,
    out: *mut Buffer,
) -> *mut c_void {
    let result = guarded(|| {
        if !host.is_null() {
            // SAFETY: a non-null `host` points to a `HostApi` that lives as long as the
            // process (abi::PluginVTable::init); it is `Copy`.
            install_host(unsafe { *host });
        }
        // SAFETY: the host lends `init_len` bytes at `init_ptr` for this call.
        let bytes = unsafe { borrowed(init_ptr, init_len) };
        let init: Init = serde_json::from_slice(bytes).map_err(|e| {
            ConnectorError::fatal(format!("the plugin cannot read the init message: {e}"))
        })?;
        let factory = factory()?;
        let _entered = runtime()?.enter();
        let connector = factory.build(
            init.settings,
            &BuildContext {
                base_dir: init.base_dir,
            },
        )?;
        tracing::debug!(type_name = factory.type_name(), "connector built");
        Ok(Box::into_raw(Box::new(Instance { connector })).cast::<c_void>())
    });
    let (handle, reply) = match result {
        Ok(handle) => (handle, Ok(())),
        Err(error) => (std::ptr::null_mut(), Err(error)),
    };
    let (_, bytes) = encode_reply(reply);
    // SAFETY: as in `describe`.
    unsafe { put(out, bytes) };
    handle
}

unsafe extern "C" fn call(
    instance: *mut c_void,
    request_ptr: *const u8,
    request_len: usize,
    out: *mut Buffer,
) -> i32 {
    let result = guarded(|| {
        if instance.is_null() {
            return Err(ConnectorError::fatal("plugin called without an instance"));
        }
        // SAFETY: a non-null handle came from `init` and has not been dropped
        // (abi::PluginVTable::drop_instance); `Instance` is `Sync`, so shared access
        // from several threads is fine.
        let instance = unsafe { &*instance.cast::<Instance>() };
        // SAFETY: the host lends `request_len` bytes at `request_ptr` for this call.
        let bytes = unsafe { borrowed(request_ptr, request_len) };
        let request: Request = serde_json::from_slice(bytes).map_err(|e| {
            ConnectorError::fatal(format!("the plugin cannot read the request: {e}"))
        })?;
        Ok(answer(&instance.connector, request))
    });
    let (status, bytes) = match result {
        Ok(answer) => answer,
        Err(error) => encode_reply::<()>(Err(error)),
    };
    // SAFETY: as in `describe`.
    unsafe { put(out, bytes) };
    status
}

unsafe extern "C" fn free_buffer(buffer: Buffer) {
    if buffer.ptr.is_null() {
        return;
    }
    // SAFETY: a non-null buffer was made by `put` from a `Vec<u8>` of this very
    // allocator, with its pointer, length and capacity unchanged, and is freed once.
    // Dropping a `Vec<u8>` cannot panic.
    drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
}

unsafe extern "C" fn drop_instance(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: the handle came from `init` and the host drops it once, after its last
    // call (abi::PluginVTable::drop_instance).
    let instance = unsafe { Box::from_raw(instance.cast::<Instance>()) };
    let result = guarded(move || {
        // A connector may hold runtime resources (timers, sockets) that must be
        // dropped inside its runtime.
        let _entered = runtime().ok().map(|r| r.enter());
        drop(instance);
        Ok(())
    });
    if let Err(error) = result {
        forward(abi::LEVEL_WARN, "tandem_plugin", &error.to_string());
    }
}

// ----- requests -----

/// Runs one request; returns the status and the encoded reply.
fn answer(connector: &Arc<dyn Connector>, request: Request) -> (i32, Vec<u8>) {
    match request {
        Request::Info => {
            let plugin = plugin();
            encode_reply(plugin.map(|plugin| InstanceInfo {
                name: plugin.name.to_owned(),
                version: plugin.version.to_owned(),
                capabilities: connector.capabilities(),
            }))
        }
        Request::Check => encode_reply(block_on(connector.check())),
        Request::Read { kind, cursor } => {
            encode_reply(block_on(connector.read(kind, cursor.as_ref())))
        }
        Request::Write { kind, ops } => {
            encode_reply(block_on(connector.write(kind, ops)).map(protocol::outcomes_to_replies))
        }
    }
}

/// Runs a connector future to completion on the plugin's runtime, on the calling
/// (host) thread. Tasks the connector spawns run on the runtime's worker.
fn block_on<T>(
    future: impl Future<Output = Result<T, ConnectorError>>,
) -> Result<T, ConnectorError> {
    runtime()?.block_on(future)
}

fn encode_reply<T: Serialize>(result: Result<T, ConnectorError>) -> (i32, Vec<u8>) {
    let status = if result.is_ok() { 0 } else { 1 };
    match serde_json::to_vec(&Reply::from(result)) {
        Ok(bytes) => (status, bytes),
        Err(e) => {
            let error = ConnectorError::fatal(format!("the plugin cannot encode its reply: {e}"));
            // A `ConnectorError` is strings and numbers: it always encodes.
            let bytes = serde_json::to_vec(&Reply::<()>::Err(error)).unwrap_or_default();
            (if bytes.is_empty() { -1 } else { 1 }, bytes)
        }
    }
}

// ----- plugin state -----

fn plugin() -> Result<&'static Plugin, ConnectorError> {
    PLUGIN
        .get()
        .ok_or_else(|| ConnectorError::fatal("plugin used before its function table was read"))
}

fn factory() -> Result<&'static dyn ConnectorFactory, ConnectorError> {
    let plugin = plugin()?;
    // A panic in `make_factory` leaves the cell empty; the next call tries again.
    Ok(FACTORY.get_or_init(plugin.make_factory).as_ref())
}

/// The plugin's own runtime: one worker thread for the tasks connectors spawn, while
/// each call's future runs on the host thread that made it.
fn runtime() -> Result<&'static tokio::runtime::Runtime, ConnectorError> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("tandem-plugin")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ConnectorError::fatal(format!("the plugin cannot start its runtime: {e}")))
}

// ----- panics -----

thread_local! {
    /// Where the last panic on this thread happened, set by the panic hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether this thread is inside an entry point, whose error will report a panic.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into [`ConnectorError::Fatal`] "plugin panicked: ...".
fn guarded<T>(f: impl FnOnce() -> Result<T, ConnectorError>) -> Result<T, ConnectorError> {
    // A location left by a panic caught elsewhere (by tokio, say) is not ours.
    let _ = LAST_PANIC.try_with(|last| last.borrow_mut().take());
    let outer = GUARDED.try_with(|g| g.replace(true)).unwrap_or(false);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let _ = GUARDED.try_with(|g| g.set(outer));
    match result {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let location = LAST_PANIC
                .try_with(|last| last.borrow_mut().take())
                .ok()
                .flatten();
            drop_payload(payload);
            Err(ConnectorError::fatal(match location {
                Some(location) => format!("plugin panicked at {location}: {message}"),
                None => format!("plugin panicked: {message}"),
            }))
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Drops a panic payload, whose `Drop` could itself panic.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Replaces the default hook (which prints to the host's stderr) with one that
/// remembers the location for the error and forwards the panic to the host's log: as
/// a debug record when the call's error will report it, as a warning otherwise (a
/// panic in a task the connector spawned, say).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let message = panic_message(info.payload());
            let text = match &location {
                Some(location) => format!("panicked at {location}: {message}"),
                None => format!("panicked: {message}"),
            };
            let _ = LAST_PANIC.try_with(|last| {
                if let Ok(mut last) = last.try_borrow_mut() {
                    *last = location;
                }
            });
            let reported = GUARDED.try_with(Cell::get).unwrap_or(false);
            let level = if reported {
                abi::LEVEL_DEBUG
            } else {
                abi::LEVEL_WARN
            };
            forward(level, "tandem_plugin", &text);
        }));
    });
}

// ----- buffers -----

/// The `len` bytes at `ptr`; empty for a null pointer.
///
/// # Safety
/// A non-null `ptr` must point to `len` initialised bytes that stay valid and
/// unchanged for `'a`.
unsafe fn borrowed<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// Hands `bytes` to the host through `out`; freed by [`free_buffer`].
///
/// # Safety
/// A non-null `out` must be valid for writing a `Buffer`.
unsafe fn put(out: *mut Buffer, bytes: Vec<u8>) {
    if out.is_null() {
        return;
    }
    let mut bytes = ManuallyDrop::new(bytes);
    let buffer = Buffer {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    };
    // SAFETY: the caller's contract; `write` does not read or drop the old value.
    unsafe { out.write(buffer) };
}

// ----- logs -----

fn install_host(host: HostApi) {
    if HOST.set(host).is_err() {
        return;
    }
    let max_level = match host.max_level {
        abi::LEVEL_OFF => return,
        abi::LEVEL_ERROR => LevelFilter::ERROR,
        abi::LEVEL_WARN => LevelFilter::WARN,
        abi::LEVEL_INFO => LevelFilter::INFO,
        abi::LEVEL_DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // Fails only if the connector set a subscriber of its own; then that one stays.
    let _ = tracing::subscriber::set_global_default(HostLog { max_level });
}

/// Sends one record to the host, if it listens.
fn forward(level: u32, target: &str, message: &str) {
    let Some(host) = HOST.get() else { return };
    if level > host.max_level {
        return;
    }
    // SAFETY: `log` comes from the host's `HostApi`, which lives as long as the
    // process; both strings are valid for the call, which copies them and never
    // unwinds.
    unsafe {
        (host.log)(
            level,
            target.as_ptr(),
            target.len(),
            message.as_ptr(),
            message.len(),
        );
    }
}

/// The plugin's `tracing` subscriber: formats each event as "message key=value ..."
/// and forwards it to the host. Spans are not forwarded.
struct HostLog {
    max_level: LevelFilter,
}

impl tracing::Subscriber for HostLog {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max_level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let level = match *metadata.level() {
            Level::ERROR => abi::LEVEL_ERROR,
            Level::WARN => abi::LEVEL_WARN,
            Level::INFO => abi::LEVEL_INFO,
            Level::DEBUG => abi::LEVEL_DEBUG,
            Level::TRACE => abi::LEVEL_TRACE,
        };
        let mut text = Text(String::new());
        event.record(&mut text);
        forward(level, metadata.target(), text.0.trim_start());
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// The message, then ` key=value` per field.
struct Text(String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Writing to a String cannot fail.
        let _ = match field.name() {
            "message" => write!(self.0, " {value}"),
            name => write!(self.0, " {name}={value}"),
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}

impl fmt::Debug for HostLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostLog")
            .field("max_level", &self.max_level)
            .finish()
    }
}

/// Turns a connector crate's factory into a plugin. Invoke it once, in a thin
/// `cdylib` wrapper crate, never in the connector crate itself (two crates exporting
/// the same symbols cannot be linked into one binary):
///
/// ```ignore
/// // connectors/file-plugin/src/lib.rs, with crate-type = ["cdylib"]
/// tandem_plugin::export_connector!(tandem_connector_file::FileConnectorFactory);
/// ```
///
/// The factory type must implement `ConnectorFactory` and `Default`; otherwise pass
/// an expression that makes it: `export_connector!(MyFactory, MyFactory::new())`.
///
/// It exports `tandem_plugin_abi_version` and `tandem_plugin_vtable` (see
/// [`abi`](crate::abi)). A plugin must unwind on panic: building it with
/// `panic = "abort"` is a compile error, since a panic would then kill the host.
#[macro_export]
macro_rules! export_connector {
    ($factory:ty $(,)?) => {
        $crate::export_connector!($factory, <$factory as ::core::default::Default>::default());
    };
    ($factory:ty, $make:expr $(,)?) => {
        #[cfg(panic = "abort")]
        ::core::compile_error!(
            "a Tandem plugin must be built with panic = \"unwind\": with panic = \"abort\" \
             a panic in the connector would kill the host"
        );

        const _: () = {
            fn __tandem_make_factory() -> ::std::boxed::Box<dyn $crate::export::ConnectorFactory> {
                let factory: $factory = $make;
                ::std::boxed::Box::new(factory)
            }

            /// The plugin ABI version this library speaks; checked by the host first.
            /// It returns a constant: nothing in it can panic.
            #[allow(unsafe_code)]
            #[unsafe(no_mangle)]
            pub extern "C" fn tandem_plugin_abi_version() -> u32 {
                $crate::ABI_VERSION
            }

            /// The plugin's function table.
            #[allow(unsafe_code)]
            #[unsafe(no_mangle)]
            pub extern "C" fn tandem_plugin_vtable() -> *const $crate::abi::PluginVTable {
                $crate::export::vtable($crate::export::Plugin {
                    name: ::core::env!("CARGO_PKG_NAME"),
                    version: ::core::env!("CARGO_PKG_VERSION"),
                    make_factory: __tandem_make_factory,
                })
            }
        };
    };
}
