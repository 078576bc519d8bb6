//! `apply`, `dequantize` and `inspect` on Hugging Face bitsandbytes model
//! folders (NF4 / FP4 with or without double quantization, LLM.int8).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use safetensors::Dtype;
use serde_json::{json, Value};

use super::apply::ApplyArgs;
use super::convert::DequantizeArgs;
use super::inspect::{inspect_safetensors, InspectArgs};
use crate::apply::matching::{residual_tensors, scan_residuals, Pairing, Residual};
use crate::model::bnb::{
    check_output_dir, dtype_from_torch, output_config, write_model, BnbModel, OutStorage, Storage,
    WeightJob, WriteOptions,
};
use crate::model::naming::RowPermutation;
use crate::model::rows::{EncodedRows, RowSource};
use crate::quant::bnb::FourBit;
use crate::{report, Error, Result};

/// What `--type` asks of a bitsandbytes model.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BnbTarget {
    Keep,
    FourBit(FourBit),
    Int8,
    Float(Dtype),
}

fn parse_target(s: &str, allow_quantized: bool) -> Result<BnbTarget> {
    let t = match s.to_ascii_lowercase().as_str() {
        "keep" if allow_quantized => BnbTarget::Keep,
        "nf4" if allow_quantized => BnbTarget::FourBit(FourBit::Nf4),
        "fp4" if allow_quantized => BnbTarget::FourBit(FourBit::Fp4),
        "int8" if allow_quantized => BnbTarget::Int8,
        "f16" => BnbTarget::Float(Dtype::F16),
        "bf16" => BnbTarget::Float(Dtype::BF16),
        "f32" => BnbTarget::Float(Dtype::F32),
        _ => {
            let allowed = if allow_quantized {
                "keep, nf4, fp4, int8, f16, bf16 or f32"
            } else {
                "f16, bf16 or f32"
            };
            return Err(Error::Usage(format!(
                "--type {s}: a bitsandbytes model folder is written as {allowed}"
            )));
        }
    };
    Ok(t)
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32)
}

/// The module dtype of a model (`dtype` or `torch_dtype` of its config).
fn model_dtype(model: &BnbModel) -> Dtype {
    let c = model.config();
    c["dtype"]
        .as_str()
        .or(c["torch_dtype"].as_str())
        .and_then(dtype_from_torch)
        .unwrap_or(Dtype::F16)
}

/// How each weight is written for `target`: quantized weights follow the
/// target; plain tensors keep their dtype unless the target is a float type
/// (then every float tensor takes it, as one torch dtype per model).
fn out_storage(model: &BnbModel, s: &Storage, target: BnbTarget) -> OutStorage {
    match (target, s) {
        (BnbTarget::Keep, _) => OutStorage::same_as(s),
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
        (BnbTarget::FourBit(kind), Storage::Int8) => OutStorage::FourBit {
            kind,
            blocksize: 64,
            dtype: model_dtype(model),
            double_quant: false,
        },
    }
}

fn config_for(model: &BnbModel, jobs: &[WeightJob<'_>], target: BnbTarget) -> Value {
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

/// `apply` with a bitsandbytes base folder.
pub fn apply(a: &ApplyArgs) -> Result<()> {
    super::set_threads(a.threads)?;
    if !a.scale.is_finite() {
        return Err(Error::Usage(format!(
            "--scale {} is not a finite number",
            a.scale
        )));
    }
    if a.split_max_size.is_some() || a.name.is_some() {
        return Err(Error::Usage(
            "--split-max-size and --name apply to GGUF outputs; a bitsandbytes folder keeps its shards and config".into(),
        ));
    }
    let target = parse_target(&a.ty, true)?;
    let model = BnbModel::open(&a.base)?;
    let residual = Residual::open(&a.residual)?;
    let mut inputs = model.paths();
    inputs.push(model.path().to_path_buf());
    inputs.extend(residual.paths());
    check_output_dir(&a.output, &inputs)?;

    let rtensors = residual_tensors(&residual)?;
    let rpath = residual.path();
    let mut pairs = Vec::new();
    let (mut no_partner, mut bad_shape, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    let by_name: BTreeMap<&str, usize> = model
        .weights()
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.as_str(), i))
        .collect();
    for (ri, rt) in rtensors.iter().enumerate() {
        let Some(&wi) = by_name.get(rt.name) else {
            let tied = model.config()["tie_word_embeddings"].as_bool() == Some(true);
            if rt.name == "lm_head.weight" && tied {
                let embed = rtensors
                    .iter()
                    .find(|e| e.name == "model.embed_tokens.weight");
                if embed.is_some_and(|e| e.ty == rt.ty && e.shape == rt.shape && e.data == rt.data)
                {
                    notes.push("the base ties lm_head to model.embed_tokens; the residual's lm_head.weight equals its embedding residual and is applied once".to_string());
                    continue;
                }
                return Err(Error::Mismatch(format!(
                    "{}: the base ties lm_head.weight to model.embed_tokens.weight, but the residual's lm_head.weight differs from its embedding residual; a tied model cannot take two different residuals",
                    rpath.display()
                )));
            }
            no_partner.push(rt.name.to_string());
            continue;
        };
        let w = &model.weights()[wi];
        let shape: Vec<u64> = w.shape.iter().map(|&d| d as u64).collect();
        if shape != rt.shape {
            bad_shape.push(format!("{} {:?} vs base {:?}", rt.name, rt.shape, w.shape));
            continue;
        }
        if model.rows(wi).is_none() {
            return Err(Error::Mismatch(format!(
                "{}: {} is a {:?} tensor in the base and cannot take a residual",
                rpath.display(),
                rt.name,
                w.storage
            )));
        }
        pairs.push(Pairing {
            base: wi,
            residual: ri,
            permutation: RowPermutation::Identity,
        });
    }
    if !bad_shape.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: {} residual tensor(s) differ in shape from the base: {}",
            rpath.display(),
            bad_shape.len(),
            bad_shape.join(", ")
        )));
    }
    if !no_partner.is_empty() && !a.allow_missing {
        return Err(Error::Mismatch(format!(
            "{}: {} residual tensor(s) have no partner in the base (names must be the base's Hugging Face names): {} (--allow-missing skips them)",
            rpath.display(),
            no_partner.len(),
            no_partner.join(", ")
        )));
    }
    if pairs.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: no residual tensor matches a weight of {}",
            rpath.display(),
            model.path().display()
        )));
    }
    let all_zero = scan_residuals(rpath, &rtensors, &pairs, &residual)?;
    if !a.quiet {
        for n in &notes {
            eprintln!("note: {n}");
        }
        if !no_partner.is_empty() {
            eprintln!(
                "warning: {} residual tensor(s) skipped (--allow-missing): {}",
                no_partner.len(),
                no_partner.join(", ")
            );
        }
    }

    let mut residual_rows: Vec<Option<Box<dyn RowSource + '_>>> =
        model.weights().iter().map(|_| None).collect();
    let mut zero = 0;
    for (p, &is_zero) in pairs.iter().zip(&all_zero) {
        if is_zero || a.scale == 0.0 {
            zero += 1;
            continue;
        }
        let rt = &rtensors[p.residual];
        residual_rows[p.base] = Some(Box::new(EncodedRows {
            path: rpath,
            name: rt.name,
            data: rt.data,
            ty: rt.ty,
            row_len: rt.row_len(),
            n_rows: rt.n_rows(),
            permutation: RowPermutation::Identity,
            pages: Some(&residual),
        }));
    }
    if zero > 0 && !a.quiet {
        eprintln!(
            "note: {zero} residual tensor(s) are all zero; their base weights are copied unchanged"
        );
    }
    let jobs: Vec<WeightJob<'_>> = model
        .weights()
        .iter()
        .zip(residual_rows)
        .enumerate()
        .map(|(i, (w, residual))| WeightJob {
            weight: i,
            out: out_storage(&model, &w.storage, target),
            residual,
            scale: a.scale,
        })
        .collect();
    let config = config_for(&model, &jobs, target);
    let outcomes = write_model(&model, &jobs, &config, &a.output, &WriteOptions::default())?;

    if let Some(path) = &a.report {
        let inputs = json!({
            "base": a.base.display().to_string(),
            "residual": a.residual.display().to_string(),
            "scale": a.scale,
            "type": a.ty,
        });
        report::write_json(path, "apply", inputs, &report::rows(&outcomes))?;
    }
    if !a.quiet {
        let rows = report::rows(&outcomes);
        eprint!("{}", report::to_text(&rows, 10));
        if let Some(warning) = report::retention_warning(&rows, None) {
            eprintln!("warning: {warning}");
        }
        eprintln!("wrote {}", a.output.display());
    }
    Ok(())
}

/// `dequantize` of a bitsandbytes folder into plain F16/BF16/F32 safetensors.
pub fn dequantize(a: &DequantizeArgs) -> Result<()> {
    super::set_threads(a.threads)?;
    if a.split_max_size.is_some() {
        return Err(Error::Usage(
            "--split-max-size applies to GGUF outputs; a bitsandbytes folder keeps its shards"
                .into(),
        ));
    }
    let target = parse_target(&a.ty, false)?;
    let model = BnbModel::open(&a.input)?;
    let mut inputs = model.paths();
    inputs.push(model.path().to_path_buf());
    check_output_dir(&a.output, &inputs)?;
    let jobs: Vec<WeightJob<'_>> = model
        .weights()
        .iter()
        .enumerate()
        .map(|(i, w)| WeightJob {
            weight: i,
            out: out_storage(&model, &w.storage, target),
            residual: None,
            scale: 1.0,
        })
        .collect();
    let config = config_for(&model, &jobs, target);
    let opts = WriteOptions {
        measure: false,
        ..Default::default()
    };
    write_model(&model, &jobs, &config, &a.output, &opts)?;
    if !a.quiet {
        eprintln!("wrote {}", a.output.display());
    }
    Ok(())
}

fn weight_json(model: &BnbModel, i: usize) -> Value {
    let w = &model.weights()[i];
    let mut v = json!({
        "name": w.name,
        "shape": w.shape,
        "storage": w.storage.label(),
        "quantized": w.storage.is_quantized(),
        "bytes": model.stored_bytes(i),
    });
    if let Storage::FourBit {
        blocksize,
        dtype,
        nested_offset,
        ..
    } = &w.storage
    {
        v["blocksize"] = json!(blocksize);
        v["dtype"] = json!(crate::model::bnb::torch_name(*dtype));
        v["double_quant"] = json!(nested_offset.is_some());
        if let Some(o) = nested_offset {
            v["nested_offset"] = json!(o);
        }
    }
    v
}

/// `inspect` of a bitsandbytes folder: the logical weights, then the
/// stored tensors as for any safetensors model.
pub fn inspect(args: &InspectArgs) -> Result<String> {
    let model = BnbModel::open(&args.file)?;
    let st = inspect_safetensors(model.safetensors(), args.json);
    if args.json {
        let weights: Vec<Value> = (0..model.weights().len())
            .map(|i| weight_json(&model, i))
            .collect();
        let st: Value = serde_json::from_str(&st).expect("inspect writes JSON");
        let v = json!({
            "format": "bitsandbytes",
            "path": model.path().display().to_string(),
            "quantization_config": model.config()["quantization_config"],
            "weights": weights,
            "safetensors": st,
        });
        return Ok(serde_json::to_string_pretty(&v).expect("json") + "\n");
    }
    let mut s = String::new();
    let n_q = model
        .weights()
        .iter()
        .filter(|w| w.storage.is_quantized())
        .count();
    let _ = writeln!(
        s,
        "{}: Hugging Face bitsandbytes model, {} weights ({} quantized)",
        model.path().display(),
        model.weights().len(),
        n_q
    );
    let _ = writeln!(
        s,
        "quantization_config: {}",
        model.config()["quantization_config"]
    );
    let _ = writeln!(
        s,
        "\n{:<52} {:>7} {:>14} {:>9} {:>8} {:>11} {:>12}",
        "weight", "storage", "shape", "blocksize", "dtype", "double quant", "bytes"
    );
    for (i, w) in model.weights().iter().enumerate() {
        let (bs, dt, dq) = match &w.storage {
            Storage::FourBit {
                blocksize,
                dtype,
                nested_offset,
                ..
            } => (
                blocksize.to_string(),
                crate::model::bnb::torch_name(*dtype).to_string(),
                if nested_offset.is_some() { "yes" } else { "no" }.to_string(),
            ),
            Storage::Int8 => ("row".into(), "float16".into(), "-".into()),
            Storage::Plain(_) => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<52} {:>7} {:>14} {:>9} {:>8} {:>11} {:>12}",
            w.name,
            w.storage.label(),
            format!("{:?}", w.shape),
            bs,
            dt,
            dq,
            model.stored_bytes(i)
        );
    }
    let _ = writeln!(s, "\nstored tensors:");
    s.push_str(&st);
    Ok(s)
}
