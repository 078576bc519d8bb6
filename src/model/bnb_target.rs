//! How a bitsandbytes folder is written for a `--type`: the storage of
//! every weight and the config.json that describes it.

use safetensors::Dtype;
use serde_json::Value;

use super::bnb::{
    dtype_from_torch, output_config, BnbModel, Method, OutStorage, Storage, WeightJob,
};
use crate::quant::bnb::FourBit;
use crate::{Error, Result};

/// What `--type` asks of a bitsandbytes model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BnbTarget {
    /// Every weight in its own storage.
    Keep,
    /// Quantized weights as NF4 or FP4.
    FourBit(FourBit),
    /// Quantized weights as LLM.int8.
    Int8,
    /// Every float tensor as this dtype, nothing quantized.
    Float(Dtype),
}

/// `--type` for a `method` folder: `keep` (when `allow_quantized`), `nf4`,
/// `fp4`, `int8` (bitsandbytes, when `allow_quantized`), `f16`, `bf16` or
/// `f32`. An FP8 folder is kept FP8 or written as floats.
pub fn parse_target(s: &str, method: Method, allow_quantized: bool) -> Result<BnbTarget> {
    let bnb = allow_quantized && method == Method::Bitsandbytes;
    let t = match s.to_ascii_lowercase().as_str() {
        "keep" if allow_quantized => BnbTarget::Keep,
        "nf4" if bnb => BnbTarget::FourBit(FourBit::Nf4),
        "fp4" if bnb => BnbTarget::FourBit(FourBit::Fp4),
        "int8" if bnb => BnbTarget::Int8,
        "f16" => BnbTarget::Float(Dtype::F16),
        "bf16" => BnbTarget::Float(Dtype::BF16),
        "f32" => BnbTarget::Float(Dtype::F32),
        _ => {
            let allowed = match (allow_quantized, bnb) {
                (true, true) => "keep, nf4, fp4, int8, f16, bf16 or f32",
                (true, false) => "keep, f16, bf16 or f32",
                _ => "f16, bf16 or f32",
            };
            return Err(Error::Usage(format!(
                "--type {s}: a {} model folder is written as {allowed}",
                method.name()
            )));
        }
    };
    Ok(t)
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32)
}

/// The module dtype of a model (`dtype` or `torch_dtype` of its config;
/// without either, float16 for bitsandbytes and bfloat16, what transformers
/// dequantizes to, for FP8).
fn model_dtype(model: &BnbModel) -> Dtype {
    let c = model.config();
    let default = match model.method() {
        Method::Bitsandbytes => Dtype::F16,
        Method::Fp8 | Method::Mlx | Method::Packed => Dtype::BF16,
        Method::Gptq => Dtype::F16,
    };
    c["dtype"]
        .as_str()
        .or(c["torch_dtype"].as_str())
        .and_then(dtype_from_torch)
        .unwrap_or(default)
}

/// How each weight is written for `target`: quantized weights follow the
/// target; plain tensors keep their dtype unless the target is a float type
/// (then every float tensor takes it, as one torch dtype per model).
pub fn out_storage(model: &BnbModel, s: &Storage, target: BnbTarget) -> OutStorage {
    match (target, s) {
        (BnbTarget::Keep, _) => OutStorage::same_as(s, model_dtype(model)),
        (BnbTarget::Float(_), Storage::Plain(p)) if !is_float(*p) => OutStorage::Plain(*p),
        (BnbTarget::Float(d), _) => OutStorage::Plain(d),
        (_, Storage::Plain(p)) => OutStorage::Plain(*p),
        (BnbTarget::Int8, _) => OutStorage::Int8,
        (
            BnbTarget::FourBit(kind),
            Storage::FourBit {
                blocksize,
                dtype,
                nested_offset,
                ..
            },
        ) => OutStorage::FourBit {
            kind,
            blocksize: *blocksize,
            dtype: *dtype,
            double_quant: nested_offset.is_some(),
        },
        // From LLM.int8: the defaults of BitsAndBytesConfig (blocksize 64,
        // no double quantization) and the model's dtype.
        (
            BnbTarget::FourBit(kind),
            Storage::Int8
            | Storage::Fp8(_)
            | Storage::Mlx(_)
            | Storage::Packed(_)
            | Storage::Gptq(_),
        ) => OutStorage::FourBit {
            kind,
            blocksize: 64,
            dtype: model_dtype(model),
            double_quant: false,
        },
    }
}

/// The config.json written with `jobs`: the base's, with the
/// quantization_config of the written storage (none for floats).
pub fn config_for(model: &BnbModel, jobs: &[WeightJob<'_>], target: BnbTarget) -> Value {
    match target {
        BnbTarget::Keep => model.config().clone(),
        BnbTarget::Float(d) => output_config(model.config(), None, Some(d)),
        _ => {
            let q = jobs
                .iter()
                .map(|j| &j.out)
                .find(|o| !matches!(o, OutStorage::Plain(_)));
            output_config(model.config(), q, None)
        }
    }
}
