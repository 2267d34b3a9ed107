//! A plugin of another ABI version, written by hand. The host must check the version
//! before anything else: its function table aborts the process when asked for.

// Exporting symbols by name is what this fixture is for.
#![allow(unsafe_code)]

/// An ABI version no tandem speaks.
#[unsafe(no_mangle)]
pub extern "C" fn tandem_plugin_abi_version() -> u32 {
    999
}

/// Must never be called: a host that asks for the table of a plugin of another ABI
/// version would misread it. Aborting makes that mistake fail the test loudly.
#[unsafe(no_mangle)]
pub extern "C" fn tandem_plugin_vtable() -> *const u8 {
    std::process::abort()
}
