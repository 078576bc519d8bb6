//! bitsandbytes 4-bit weights read straight from their stored parts, with
//! the crate's codecs: what the bitsandbytes tests compare outputs by.

use qresidual::format::st::SafetensorsModel;
use qresidual::quant::bnb::{dequantize_4bit, FourBit, NestedAbsmax};
use serde_json::Value;

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn tensor<'a>(m: &'a SafetensorsModel, name: &str) -> &'a [u8] {
    m.data(m.get(name).unwrap_or_else(|| panic!("{name} missing")))
}

/// A 4-bit weight as stored: packed codes, the stored absmax (f32 bytes or
/// nested codes), the nested state if any, and the absmax as it decodes.
pub struct Stored {
    pub packed: Vec<u8>,
    pub absmax_bytes: Vec<u8>,
    pub nested: Option<(Vec<f32>, f32)>,
    pub absmax: Vec<f32>,
    pub blocksize: usize,
    pub n: usize,
}

pub fn stored(m: &SafetensorsModel, w: &str, kind: FourBit) -> Stored {
    let qs: Value = serde_json::from_slice(tensor(
        m,
        &format!("{w}.quant_state.bitsandbytes__{}", kind.name()),
    ))
    .unwrap();
    let n: usize = qs["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .product();
    let absmax_bytes = tensor(m, &format!("{w}.absmax")).to_vec();
    let (nested, absmax) = match qs.get("nested_offset") {
        Some(off) => {
            let offset = off.as_f64().unwrap() as f32;
            let absmax2 = f32s(tensor(m, &format!("{w}.nested_absmax")));
            let decoded = NestedAbsmax {
                codes: absmax_bytes.clone(),
                absmax2: absmax2.clone(),
                offset,
                code: f32s(tensor(m, &format!("{w}.nested_quant_map")))
                    .try_into()
                    .unwrap(),
            }
            .dequantize()
            .unwrap();
            (Some((absmax2, offset)), decoded)
        }
        None => (None, f32s(&absmax_bytes)),
    };
    Stored {
        packed: tensor(m, w).to_vec(),
        absmax_bytes,
        nested,
        absmax,
        blocksize: qs["blocksize"].as_u64().unwrap() as usize,
        n,
    }
}

impl Stored {
    pub fn decode(&self, kind: FourBit) -> Vec<f32> {
        let mut out = vec![0f32; self.n];
        dequantize_4bit(
            kind,
            &self.packed,
            &self.absmax,
            self.blocksize,
            self.n,
            &mut out,
        )
        .unwrap();
        out
    }

    /// Whether block `b` is stored with the same codes and absmax as in `o`.
    pub fn same_block(&self, o: &Stored, b: usize) -> bool {
        let bs = self.blocksize;
        let nib = |p: &[u8], i: usize| {
            if i.is_multiple_of(2) {
                p[i / 2] >> 4
            } else {
                p[i / 2] & 15
            }
        };
        let elems = b * bs..((b + 1) * bs).min(self.n);
        let absmax_eq = match self.nested {
            Some(_) => self.absmax_bytes[b] == o.absmax_bytes[b],
            None => self.absmax_bytes[b * 4..b * 4 + 4] == o.absmax_bytes[b * 4..b * 4 + 4],
        };
        absmax_eq
            && elems
                .into_iter()
                .all(|i| nib(&self.packed, i) == nib(&o.packed, i))
    }
}
