//! The C-ABI types of the plugin boundary (ABI version [`ABI_VERSION`](crate::ABI_VERSION)).
//!
//! A plugin library exports two symbols:
//!
//! - `tandem_plugin_abi_version() -> u32` ([`AbiVersionFn`]), checked before anything
//!   else;
//! - `tandem_plugin_vtable() -> *const PluginVTable` ([`VTableFn`]), a table that lives
//!   as long as the library.
//!
//! Every payload is UTF-8 JSON ([`crate::protocol`]). Pointers to host bytes are
//! borrowed for the duration of a call only. Bytes the plugin returns are written to
//! a [`Buffer`] that the host must hand back to `free_buffer` exactly once.
//!
//! The functions of the table may be called from any thread, concurrently, also on
//! the same instance.

use std::ffi::c_void;

/// The symbol of the ABI version function.
pub const ABI_VERSION_SYMBOL: &str = "tandem_plugin_abi_version";
/// The symbol of the function table.
pub const VTABLE_SYMBOL: &str = "tandem_plugin_vtable";

/// `tandem_plugin_abi_version`.
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// `tandem_plugin_vtable`.
pub type VTableFn = unsafe extern "C" fn() -> *const PluginVTable;

/// Bytes allocated by the plugin and owned by it: the host reads `len` bytes at `ptr`,
/// then passes the buffer unchanged to [`PluginVTable::free_buffer`]. An empty buffer
/// has a null `ptr` and need not be freed (freeing it is harmless).
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    pub ptr: *mut u8,
    pub len: usize,
    /// The allocation's capacity, for the plugin's own use when freeing.
    pub cap: usize,
}

impl Buffer {
    pub const EMPTY: Buffer = Buffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };
}

/// Log levels on the boundary: [`LEVEL_OFF`] disables logging; a record of level `l`
/// is sent when `l <= max_level`.
pub const LEVEL_OFF: u32 = 0;
pub const LEVEL_ERROR: u32 = 1;
pub const LEVEL_WARN: u32 = 2;
pub const LEVEL_INFO: u32 = 3;
pub const LEVEL_DEBUG: u32 = 4;
pub const LEVEL_TRACE: u32 = 5;

/// Writes one log record: `level` (1 error .. 5 trace), `target` (the plugin-side
/// module path) and the formatted message, both UTF-8. The host copies what it needs
/// before returning; it never unwinds.
pub type LogFn = unsafe extern "C" fn(
    level: u32,
    target_ptr: *const u8,
    target_len: usize,
    message_ptr: *const u8,
    message_len: usize,
);

/// What the host offers a plugin. Passed to `init`; it lives as long as the process.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostApi {
    /// The most verbose level the host records ([`LEVEL_OFF`] .. [`LEVEL_TRACE`]);
    /// the plugin does not send anything above it.
    pub max_level: u32,
    pub log: LogFn,
}

/// The plugin's function table.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVTable {
    /// Writes a [`Description`](crate::protocol::Description) (JSON) to `out`.
    /// Returns 0 on success; otherwise `out` holds a
    /// [`Reply::Err`](crate::protocol::Reply) or nothing.
    pub describe: unsafe extern "C" fn(out: *mut Buffer) -> i32,
    /// Builds a connector from an [`Init`](crate::protocol::Init) message (JSON at
    /// `init_ptr`). Returns the instance handle, or null when it failed; either way a
    /// [`Reply<()>`](crate::protocol::Reply) is written to `out`. `host` may be null
    /// (no logging).
    pub init: unsafe extern "C" fn(
        host: *const HostApi,
        init_ptr: *const u8,
        init_len: usize,
        out: *mut Buffer,
    ) -> *mut c_void,
    /// Answers one [`Request`](crate::protocol::Request) (JSON) on an instance with a
    /// [`Reply`](crate::protocol::Reply) written to `out`. Returns 0 when the reply is
    /// `ok`, 1 when it is `err`, -1 when no reply could be written.
    pub call: unsafe extern "C" fn(
        instance: *mut c_void,
        request_ptr: *const u8,
        request_len: usize,
        out: *mut Buffer,
    ) -> i32,
    /// Frees a buffer the plugin returned.
    pub free_buffer: unsafe extern "C" fn(buffer: Buffer),
    /// Drops an instance. No call on it may be running or follow.
    pub drop_instance: unsafe extern "C" fn(instance: *mut c_void),
}
