//! Metadata values: the 13 GGUF value types, their exact encoding and a
//! bounds-checked decoder that never allocates more than the input can hold.

use std::fmt;

/// Arrays may hold arrays; this bounds the recursion so a crafted file cannot
/// overflow the stack.
pub const MAX_ARRAY_NESTING: usize = 16;

/// gguf.cpp's `GGUF_MAX_STRING_LENGTH`.
pub const MAX_STRING_LENGTH: u64 = 1 << 30;

/// gguf.cpp's `GGUF_MAX_ARRAY_ELEMENTS`.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 30;

/// A GGUF metadata value type, with its id as discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with this id, `None` for ids outside 0..=12.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The id written in files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// gguf.cpp's short name (`u32`, `str`, `arr`…), also the prefix of
    /// [`MetaValue::parse_typed`].
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Encoded size of a scalar of this type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type can take in a file, used to
    /// reject counts the remaining bytes cannot hold before allocating.
    pub(crate) fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1) as u64,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An array value. Every item has type `elem_type`; items of an array of
/// arrays are [`MetaValue::Array`].
#[derive(Debug, Clone, PartialEq)]
pub struct MetaArray {
    /// Type of every item.
    pub elem_type: ValueType,
    /// The items, in file order.
    pub items: Vec<MetaValue>,
}

/// One metadata value, with its exact GGUF type.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type holding a non-negative value, widened.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any float or integer, as `f64` (large 64-bit integers round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self
                .as_i64()
                .map(|v| v as f64)
                .or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    /// The items of an array value.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Parse `TYPE:VALUE` as given on the command line: `u32:128009`,
    /// `str:abc`, `f32:1.5`, `bool:true`, `i64:-3`. Types are the
    /// [`ValueType::name`]s (`string` is accepted for `str`); arrays cannot be
    /// given this way.
    pub fn parse_typed(spec: &str) -> Result<MetaValue, String> {
        let (ty, text) = spec.split_once(':').ok_or_else(|| {
            format!("'{spec}' has no type: write TYPE:VALUE, e.g. u32:1 or str:text")
        })?;
        fn num<T: std::str::FromStr>(ty: &str, text: &str) -> Result<T, String>
        where
            T::Err: fmt::Display,
        {
            text.trim()
                .parse::<T>()
                .map_err(|e| format!("'{text}' is not a valid {ty}: {e}"))
        }
        Ok(match ty {
            "u8" => MetaValue::U8(num(ty, text)?),
            "i8" => MetaValue::I8(num(ty, text)?),
            "u16" => MetaValue::U16(num(ty, text)?),
            "i16" => MetaValue::I16(num(ty, text)?),
            "u32" => MetaValue::U32(num(ty, text)?),
            "i32" => MetaValue::I32(num(ty, text)?),
            "u64" => MetaValue::U64(num(ty, text)?),
            "i64" => MetaValue::I64(num(ty, text)?),
            "f32" => MetaValue::F32(num(ty, text)?),
            "f64" => MetaValue::F64(num(ty, text)?),
            "bool" => MetaValue::Bool(match text.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => return Err(format!("'{other}' is not a valid bool: use true or false")),
            }),
            "str" | "string" => MetaValue::String(text.to_string()),
            "arr" | "array" => {
                return Err("arrays cannot be given as TYPE:VALUE".to_string());
            }
            other => {
                return Err(format!(
                    "unknown value type '{other}' in '{spec}': use one of u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool str"
                ))
            }
        })
    }

    /// Check that every array item has the array's declared type, recursively.
    pub(crate) fn check_consistent(&self, depth: usize) -> Result<(), String> {
        let MetaValue::Array(arr) = self else {
            return Ok(());
        };
        if depth >= MAX_ARRAY_NESTING {
            return Err(format!(
                "arrays nested deeper than {MAX_ARRAY_NESTING} levels"
            ));
        }
        for (i, item) in arr.items.iter().enumerate() {
            if item.value_type() != arr.elem_type {
                return Err(format!(
                    "array of {} holds a {} at index {i}",
                    arr.elem_type,
                    item.value_type()
                ));
            }
            item.check_consistent(depth + 1)?;
        }
        Ok(())
    }

    /// Append the encoded payload (without the leading type id) to `out`.
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::String(s) => encode_str(s, out),
            MetaValue::Array(a) => {
                out.extend_from_slice(&a.elem_type.id().to_le_bytes());
                out.extend_from_slice(&(a.items.len() as u64).to_le_bytes());
                for item in &a.items {
                    item.encode_payload(out);
                }
            }
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Append a GGUF string (u64 length, bytes).
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Append one key-value pair as gguf.cpp writes it.
pub(crate) fn encode_kv(key: &str, value: &MetaValue, out: &mut Vec<u8>) {
    encode_str(key, out);
    out.extend_from_slice(&value.value_type().id().to_le_bytes());
    value.encode_payload(out);
}

/// A little-endian cursor over a byte slice. Every read checks the remaining
/// length first, so nothing is allocated that the input cannot back.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    pub(crate) fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "file truncated: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length then UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LENGTH {
            return Err(format!(
                "{what}: string length {len} exceeds the maximum {MAX_STRING_LENGTH}"
            ));
        }
        if len > self.remaining() {
            return Err(format!(
                "{what}: string length {len} exceeds the {} bytes left in the file",
                self.remaining()
            ));
        }
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{what}: string is not valid UTF-8 ({e})"))
    }

    /// A value of type `ty` (the type id has already been read).
    pub(crate) fn value(
        &mut self,
        ty: ValueType,
        what: &str,
        depth: usize,
    ) -> Result<MetaValue, String> {
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.u8(what)?),
            ValueType::I8 => MetaValue::I8(self.u8(what)? as i8),
            ValueType::U16 => MetaValue::U16(self.u16(what)?),
            ValueType::I16 => MetaValue::I16(self.u16(what)? as i16),
            ValueType::U32 => MetaValue::U32(self.u32(what)?),
            ValueType::I32 => MetaValue::I32(self.u32(what)? as i32),
            ValueType::F32 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            ValueType::Bool => {
                let b = self.u8(what)?;
                if b > 1 {
                    return Err(format!("{what}: bool byte is {b}, not 0 or 1"));
                }
                MetaValue::Bool(b == 1)
            }
            ValueType::String => MetaValue::String(self.string(what)?),
            ValueType::U64 => MetaValue::U64(self.u64(what)?),
            ValueType::I64 => MetaValue::I64(self.u64(what)? as i64),
            ValueType::F64 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_NESTING} levels"
                    ));
                }
                let id = self.u32(what)?;
                let elem_type = ValueType::from_id(id)
                    .ok_or_else(|| format!("{what}: array has invalid element type id {id}"))?;
                let n = self.u64(what)?;
                if n > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "{what}: array length {n} exceeds the maximum {MAX_ARRAY_ELEMENTS}"
                    ));
                }
                let min = elem_type.min_encoded_size();
                if n.saturating_mul(min) > self.remaining() {
                    return Err(format!(
                        "{what}: array length {n} of {elem_type} needs at least {} bytes but only {} remain in the file",
                        n.saturating_mul(min),
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_type, what, depth + 1)?);
                }
                MetaValue::Array(MetaArray { elem_type, items })
            }
        })
    }
}
