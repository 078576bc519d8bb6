//! `apply` with a bitsandbytes, FP8, MLX or pack-quantized base folder: the residual's Hugging Face
//! names are the base's own, and the output is a folder in the same layout.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::matching::{
    residual_tensors, scan_residuals, tied_output, Matching, Pairing, Residual, ResidualTensor,
};
use super::{ApplyRequest, ApplyResult, Strategy};
use crate::engine::bnb::write_model;
use crate::engine::log::Log;
use crate::model::bnb::{check_output_dir, BnbModel, Method, WeightJob, WriteOptions};
use crate::model::bnb_target::{config_for, out_storage, parse_target, BnbTarget};
use crate::model::naming::RowPermutation;
use crate::report;
use crate::{Error, Result};

/// Options that do not apply to a bitsandbytes or FP8 base.
fn check_request(req: &ApplyRequest) -> Result<()> {
    let usage = |m: &str| Err(Error::Usage(m.into()));
    if req.budget.is_set() {
        return usage("--max-size, --bpw and --min-retention choose GGUF types: they do not apply to bitsandbytes or FP8 bases");
    }
    if req.imatrix.is_some() {
        return usage(
            "--imatrix applies to GGUF bases; bitsandbytes and FP8 formats take no importance matrix",
        );
    }
    if req.rounding == Some(super::Rounding::Dither) {
        return usage("--rounding dither re-rounds on a GGUF base's grid: it does not apply to bitsandbytes or FP8 bases");
    }
    match req.strategy {
        Strategy::Adapter { .. } => {
            return usage("--strategy adapter needs a GGUF base (llama.cpp adapters)")
        }
        Strategy::Auto | Strategy::Fresh | Strategy::Search => {}
    }
    if req.split_max_size.is_some() || req.metadata.name.is_some() {
        return usage("--split-max-size and --name apply to GGUF outputs; a bitsandbytes or FP8 folder keeps its shards and config");
    }
    Ok(())
}

/// Match every residual tensor to the base weight of the same name and shape.
pub fn match_residual(
    model: &BnbModel,
    rpath: &Path,
    rtensors: &[ResidualTensor<'_>],
    allow_missing: bool,
) -> Result<Matching> {
    let mut m = Matching::default();
    let (mut no_partner, mut bad_shape) = (Vec::new(), Vec::new());
    let by_name: BTreeMap<&str, usize> = model
        .weights()
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.as_str(), i))
        .collect();
    let tied = model.config()["tie_word_embeddings"].as_bool() == Some(true);
    let embed = rtensors
        .iter()
        .position(|e| e.name == "model.embed_tokens.weight");
    // Stacked MLX experts: base weight -> the residual tensor of each expert.
    let mut stacks: BTreeMap<usize, Vec<Option<usize>>> = BTreeMap::new();
    for (ri, rt) in rtensors.iter().enumerate() {
        let Some(&wi) = by_name.get(rt.name) else {
            if rt.name == "lm_head.weight" && tied {
                let names = ("lm_head.weight", "model.embed_tokens.weight");
                m.notes
                    .push(tied_output(rpath, rtensors, ri, embed, names)?);
                continue;
            }
            let stacked = (model.method() == Method::Mlx)
                .then(|| mlx_expert(rt.name))
                .flatten()
                .and_then(|(name, e)| by_name.get(name.as_str()).map(|&wi| (wi, e)));
            if let Some((wi, e)) = stacked {
                let w = &model.weights()[wi];
                let shape: Vec<u64> = w.shape.iter().skip(1).map(|&d| d as u64).collect();
                if w.shape.len() != 3 || e >= w.shape[0] || shape != rt.shape {
                    bad_shape.push(format!(
                        "{} {:?} vs expert {e} of base {} {:?}",
                        rt.name, rt.shape, w.name, w.shape
                    ));
                    continue;
                }
                let slots = stacks.entry(wi).or_insert_with(|| vec![None; w.shape[0]]);
                if let Some(prev) = slots[e].replace(ri) {
                    return Err(Error::Mismatch(format!(
                        "{}: residual tensors {} and {} are both expert {e} of {}",
                        rpath.display(),
                        rtensors[prev].name,
                        rt.name,
                        w.name
                    )));
                }
                continue;
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
        m.pairs.push(Pairing::one(wi, ri, RowPermutation::Identity));
    }
    for (wi, slots) in stacks {
        let parts: Vec<usize> = slots.iter().flatten().copied().collect();
        if parts.len() < slots.len() {
            let missing: Vec<String> = (0..slots.len())
                .filter(|&e| slots[e].is_none())
                .map(|e| e.to_string())
                .collect();
            return Err(Error::Mismatch(format!(
                "{}: {} stacks every expert of the layer; experts {} have no residual (given: {})",
                rpath.display(),
                model.weights()[wi].name,
                missing.join(", "),
                rtensors[parts[0]].name
            )));
        }
        let first = parts[0];
        m.pairs.push(Pairing {
            parts,
            ..Pairing::one(wi, first, RowPermutation::Identity)
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
    if !no_partner.is_empty() && !allow_missing {
        return Err(Error::Mismatch(format!(
            "{}: {} residual tensor(s) have no partner in the base (names must be the base's Hugging Face names): {} (--allow-missing skips them)",
            rpath.display(),
            no_partner.len(),
            no_partner.join(", ")
        )));
    }
    if m.pairs.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: no residual tensor matches a weight of {}",
            rpath.display(),
            model.path().display()
        )));
    }
    m.unmatched = no_partner;
    Ok(m)
}

/// The stacked weight mlx-lm keeps expert `e` of a Hugging Face expert
/// weight in: `….experts.E.NAME` is expert `E` of `….switch_mlp.NAME`
/// (SwitchLinear, as mlx-lm's `sanitize` stacks Qwen3-MoE, Mixtral,
/// DeepSeek and the other mixture-of-experts families).
fn mlx_expert(name: &str) -> Option<(String, usize)> {
    let (head, rest) = name.split_once(".experts.")?;
    let (e, tail) = rest.split_once('.')?;
    let e: usize = e.parse().ok()?;
    Some((format!("{head}.switch_mlp.{tail}"), e))
}

/// `apply` on a bitsandbytes folder.
pub fn apply(req: &ApplyRequest, model: &BnbModel, log: &Log) -> Result<ApplyResult> {
    check_request(req)?;
    let target = parse_target(&req.target, model.method(), true)?;
    if req.keep_scales && (model.method() != Method::Fp8 || target != BnbTarget::Keep) {
        return Err(Error::Usage(format!(
            "{}: --keep-scales applies to FP8 bases written with --type keep (a {} folder, --type {})",
            model.path().display(),
            model.method().name(),
            req.target
        )));
    }
    let residual = Residual::open(&req.residual)?;
    let mut inputs = model.paths();
    inputs.push(model.path().to_path_buf());
    inputs.extend(residual.paths());
    check_output_dir(&req.output, &inputs)?;

    let rtensors = residual_tensors(&residual)?;
    let rpath = residual.path();
    let matching = match_residual(model, rpath, &rtensors, req.allow_missing)?;
    let all_zero = scan_residuals(rpath, &rtensors, &matching.pairs, &residual)?;
    let residual_rows = matching.residual_rows(
        &residual,
        &rtensors,
        &all_zero,
        (model.weights().len(), req.scale),
        log,
    );
    let jobs: Vec<WeightJob<'_>> = model
        .weights()
        .iter()
        .zip(residual_rows)
        .enumerate()
        .map(|(i, (w, residual))| WeightJob {
            weight: i,
            out: out_storage(model, &w.storage, target),
            residual,
            scale: req.scale,
        })
        .collect();
    let config = config_for(model, &jobs, target);
    // auto is fresh here: bitsandbytes' own bytes for the sum.
    let search = req.strategy == Strategy::Search;
    let opts = WriteOptions {
        search,
        keep_fp8_scales: req.keep_scales,
        ..Default::default()
    };
    let outcomes = write_model(model, &jobs, &config, &req.output, &opts, log.progress())?;
    let rows = report::rows(&outcomes);
    let mut inputs = super::report_inputs(req);
    inputs["type"] = json!(req.target);
    if search {
        // Named only here, so that fresh reports keep their bytes.
        inputs["strategy"] = json!(req.strategy.name());
    }
    if req.keep_scales {
        inputs["scales"] = json!("base");
    }
    let mut json = report::to_json("apply", inputs, &rows);
    let retention_warning = report::retention_warning(&rows, None);
    report::add_warning(&mut json, retention_warning.as_deref());
    if let Some(path) = &req.report {
        report::write_report(path, &json)?;
    }
    Ok(ApplyResult {
        outputs: vec![req.output.clone()],
        retention_warning,
        tensors: rows,
        adapter: None,
        plan: None,
        searched: search,
        report: json,
    })
}
