//! A perfectly good shared library without the symbols of a Tandem plugin.

/// Not exported (no `#[no_mangle]`): the library has no Tandem symbols at all.
pub fn answer() -> u32 {
    42
}
