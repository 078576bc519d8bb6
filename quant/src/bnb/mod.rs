//! The bitsandbytes weight formats: NF4 / FP4 4-bit blockwise codes, the
//! blockwise 8-bit dynamic map used for double quantization of the 4-bit
//! scales, and LLM.int8 row-wise codes.
//!
//! Everything here follows bitsandbytes 0.50 on CPU, which is what a
//! `transformers` + `BitsAndBytesConfig` run without a GPU executes:
//! - `quantize_4bit`: the pure-torch kernel of `backends/default/ops.py`;
//! - `dequantize_4bit`: `code[nibble] * absmax` as all its CPU paths compute it;
//! - `quantize_blockwise` (double quant): the native lookup-table
//!   `quantize_cpu` (csrc/cpu_ops.cpp), and `torch.mean` for its offset;
//! - `int8_vectorwise_quant` / `int8_vectorwise_dequant`: the default torch kernels.
//!
//! [`search_4bit`] is `--strategy search` for NF4/FP4: per block, the base's
//! own block or the fresh one, whichever decodes nearer to the sum.
//!
//! Tensors are handled *flattened*: a 4-bit block runs over consecutive
//! elements of the whole tensor and does not restart at row boundaries.
//! Inputs are `f32`; callers holding f16/bf16 weights convert exactly first.
//!
//! How a `transformers` checkpoint maps onto this API (observed with
//! transformers 5.24, fixtures/tiny_bnb/layout.txt), for a weight `W` of
//! `shape` (from the JSON in `W.quant_state.bitsandbytes__<nf4|fp4>`):
//! - 4-bit: `W` is U8 `[ceil(n/2), 1]` = `packed`; `W.quant_map` (F32 \[16\])
//!   equals [`FourBit::code`]; without double quant `W.absmax` is F32 and goes
//!   straight to [`dequantize_4bit`]; with it `W.absmax` is U8 (`codes`),
//!   `W.nested_absmax` F32 (`absmax2`), `W.nested_quant_map` F32 \[256\]
//!   (`code`) and the JSON's `nested_offset` (`offset`): build a
//!   [`NestedAbsmax`] and call [`NestedAbsmax::dequantize`] first.
//! - int8: `W` is I8 `[out, in]` = `CB`, the module's `SCB` is F32 `[out]`
//!   and `W_format` a U8 scalar (0, row-major); see [`dequantize_int8_rows`].

mod common;
mod dynamic;
mod fourbit;
mod int8;
mod search;

pub use common::{num_blocks, BnbError};
pub use dynamic::{
    dequantize_blockwise, dynamic_map, quantize_blockwise, torch_mean_f32, torch_mean_f32_threads,
    NestedAbsmax, NESTED_BLOCKSIZE,
};
pub use fourbit::{dequantize_4bit, quantize_4bit, FourBit, BLOCKSIZES_4BIT};
pub use int8::{dequantize_int8_rows, quantize_int8_rows, INT8_DEQUANT_FACTOR};
pub use search::{search_4bit, Blocks4};
