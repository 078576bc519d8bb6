//! The ggml type table: every type id a GGUF file can hold.
//! Sizes follow `type_traits` in ggml's `ggml.c` and the block structs of
//! `ggml-common.h`.

use std::fmt;

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        /// A ggml tensor type, with its GGUF id as discriminant.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum GgmlType {
            $(
                #[doc = concat!("`", $name, "`: ", stringify!($block), " elements in ", stringify!($bytes), " bytes.")]
                $variant = $id,
            )*
        }

        /// Every type, in id order.
        pub const ALL_TYPES: &[GgmlType] = &[$(GgmlType::$variant),*];

        impl GgmlType {
            /// The type with this GGUF id; `None` for removed or unknown ids.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// Block geometry and name.
            pub const fn info(self) -> TypeInfo {
                match self {
                    $(GgmlType::$variant => TypeInfo { name: $name, block_size: $block, type_size: $bytes },)*
                }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "f32", 1, 4;
    F16 = 1, "f16", 1, 2;
    Q4_0 = 2, "q4_0", 32, 18;
    Q4_1 = 3, "q4_1", 32, 20;
    Q5_0 = 6, "q5_0", 32, 22;
    Q5_1 = 7, "q5_1", 32, 24;
    Q8_0 = 8, "q8_0", 32, 34;
    Q8_1 = 9, "q8_1", 32, 36;
    Q2_K = 10, "q2_K", 256, 84;
    Q3_K = 11, "q3_K", 256, 110;
    Q4_K = 12, "q4_K", 256, 144;
    Q5_K = 13, "q5_K", 256, 176;
    Q6_K = 14, "q6_K", 256, 210;
    Q8_K = 15, "q8_K", 256, 292;
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    IQ2_XS = 17, "iq2_xs", 256, 74;
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    IQ1_S = 19, "iq1_s", 256, 50;
    IQ4_NL = 20, "iq4_nl", 32, 18;
    IQ3_S = 21, "iq3_s", 256, 110;
    IQ2_S = 22, "iq2_s", 256, 82;
    IQ4_XS = 23, "iq4_xs", 256, 136;
    I8 = 24, "i8", 1, 1;
    I16 = 25, "i16", 1, 2;
    I32 = 26, "i32", 1, 4;
    I64 = 27, "i64", 1, 8;
    F64 = 28, "f64", 1, 8;
    IQ1_M = 29, "iq1_m", 256, 56;
    BF16 = 30, "bf16", 1, 2;
    TQ1_0 = 34, "tq1_0", 256, 54;
    TQ2_0 = 35, "tq2_0", 256, 66;
    MXFP4 = 39, "mxfp4", 32, 17;
    NVFP4 = 40, "nvfp4", 64, 36;
    Q1_0 = 41, "q1_0", 128, 18;
    Q2_0 = 42, "q2_0", 64, 18;
}

/// Name and block geometry of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    /// ggml's name (`type_name` in `ggml.c`), e.g. `q4_K`.
    pub name: &'static str,
    /// Elements per block.
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
}

impl GgmlType {
    /// The GGUF type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type, e.g. `q4_K`.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Parse a type name, case-insensitively (`Q4_K`, `q4_k`, `bf16`).
    pub fn from_name(name: &str) -> Option<Self> {
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.info().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.info().type_size
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number
    /// of blocks or the size overflows.
    pub fn row_size(self, n: usize) -> Option<usize> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size())
    }

    /// Same as [`row_size`](Self::row_size) in `u64`, for sizes read from files.
    pub fn row_size_u64(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }

    /// Bits per weight of the encoded form.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// Whether the type packs several elements into blocks with scales.
    pub fn is_quantized(self) -> bool {
        !matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::F64
                | GgmlType::I8
                | GgmlType::I16
                | GgmlType::I32
                | GgmlType::I64
        )
    }

    /// Whether the type holds integers rather than weights.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64
        )
    }

    /// Whether ggml needs an importance matrix to produce this type.
    pub fn requires_imatrix(self) -> bool {
        matches!(
            self,
            GgmlType::IQ2_XXS
                | GgmlType::IQ2_XS
                | GgmlType::IQ2_S
                | GgmlType::IQ1_S
                | GgmlType::IQ1_M
                | GgmlType::IQ3_XXS
                | GgmlType::IQ3_S
        )
    }

    /// A type that can be written without an importance matrix and is
    /// closest in size to this one.
    pub fn nearest_writable(self) -> GgmlType {
        match self {
            GgmlType::IQ1_S | GgmlType::IQ1_M | GgmlType::IQ2_XXS | GgmlType::IQ2_XS => {
                GgmlType::Q2_K
            }
            GgmlType::IQ2_S | GgmlType::IQ3_XXS | GgmlType::IQ3_S => GgmlType::Q3_K,
            t => t,
        }
    }

    pub(crate) fn quantize_unavailable_reason(self) -> &'static str {
        if self.requires_imatrix() {
            "this type needs an importance matrix"
        } else if self.is_integer() {
            "integer tensors hold no weights"
        } else {
            "no encoder for this type"
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for &t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
        assert_eq!(ALL_TYPES.len(), 35);
    }

    #[test]
    fn row_size_rejects_partial_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4_K.row_size(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_size(100), None);
        assert_eq!(GgmlType::F32.row_size(usize::MAX), None);
        assert_eq!(GgmlType::Q8_0.row_size_u64(u64::MAX - 31), None);
    }
}
