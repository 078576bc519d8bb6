//! AVX2 (and F16C) variants of the scalar ports, bit-exact with them.
//!
//! One dispatch style: every public function here is a safe entry point
//! declared by [`avx2_entry!`], which runs its `#[target_feature]` body when
//! [`Isa::Avx2`](super::cpu::Isa) is available and the scalar port it
//! follows otherwise. The registry (`super::registry`) lists these entry
//! points beside the scalar ones. The modules here use `scalar` and `cpu`,
//! never the other way round.

/// Declares the safe entry point `$name` that runs the `unsafe`
/// `#[target_feature]` function `$imp` when AVX2 (with F16C) is available
/// and `$fallback` (the scalar port) otherwise.
macro_rules! avx2_entry {
    ($doc:literal, $name:ident, $imp:path, $fallback:path,
     fn($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[doc = $doc]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            if crate::ggml::cpu::Isa::Avx2.is_available() {
                // SAFETY: AVX2 and F16C were detected.
                unsafe { $imp($($arg),*) }
            } else {
                $fallback($($arg),*)
            }
        }
    };
}

pub mod iq4;
pub mod kquants;
pub mod rows;
