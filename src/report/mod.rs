//! The precision report: a table on stderr, the full JSON, and the JSON
//! as an HTML page (`html`).

pub mod html;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::engine::pipeline::Outcome;
use crate::model::bnb::WeightOutcome;
use crate::quant::stats::ErrorStats;
use crate::quant::SearchWins;

/// One tensor of a report, whatever the container: GGUF tensors and
/// bitsandbytes weights both become rows.
#[derive(Debug, Clone)]
pub struct Row {
    /// Tensor or weight name.
    pub name: String,
    /// Encoding in the input (`q4_K`, `nf4`, `F16`…).
    pub type_in: String,
    /// Encoding in the output.
    pub type_out: String,
    /// Number of weights.
    pub n_elements: u64,
    /// Bytes stored in the input, all parts together.
    pub bytes_in: f64,
    /// Bytes stored in the output.
    pub bytes_out: f64,
    /// Whether the bytes were copied unchanged.
    pub copied: bool,
    /// Whether a residual was added.
    pub has_residual: bool,
    /// Output against the exact f32 result (absent for copies).
    pub stats: Option<ErrorStats>,
    /// Blocks won per candidate under `--strategy search`.
    pub search: Option<SearchWins>,
}

impl From<&Outcome> for Row {
    fn from(o: &Outcome) -> Row {
        let bytes = |t: qresidual_quant::GgmlType| t.bits_per_weight() * o.n_elements as f64 / 8.0;
        Row {
            name: o.name.clone(),
            type_in: o.type_in.name().to_string(),
            type_out: o.type_out.name().to_string(),
            n_elements: o.n_elements,
            bytes_in: bytes(o.type_in),
            bytes_out: bytes(o.type_out),
            copied: o.copied,
            has_residual: o.has_residual,
            stats: o.stats,
            search: o.search,
        }
    }
}

impl From<&WeightOutcome> for Row {
    fn from(o: &WeightOutcome) -> Row {
        Row {
            name: o.name.clone(),
            type_in: o.type_in.clone(),
            type_out: o.type_out.clone(),
            n_elements: o.n_elements,
            bytes_in: o.bytes_in as f64,
            bytes_out: o.bytes_out as f64,
            copied: o.copied,
            has_residual: o.has_residual,
            stats: o.stats,
            search: o.search,
        }
    }
}

/// Rows from any outcomes.
pub fn rows<'a, T: 'a>(outcomes: impl IntoIterator<Item = &'a T>) -> Vec<Row>
where
    Row: From<&'a T>,
{
    outcomes.into_iter().map(Row::from).collect()
}

fn finite_or_null(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_infinite() && x > 0.0 {
        json!("inf")
    } else {
        Value::Null
    }
}

/// The one statistics schema of every report (apply, quantize, extract,
/// compare, bitsandbytes): the measured values against the reference, and
/// the residual's norm and retention (`null` where no residual was added).
pub fn stats_json(s: &ErrorStats) -> Value {
    json!({
        "n_elements": s.n,
        "rmse": finite_or_null(s.rmse()),
        "max_abs": finite_or_null(s.max_abs()),
        "relative_rmse": finite_or_null(s.relative_rmse()),
        "cosine": finite_or_null(s.cosine()),
        "snr_db": finite_or_null(s.snr_db()),
        "delta_norm": finite_or_null(s.delta_norm()),
        "retention": s.retention().map(finite_or_null).unwrap_or(Value::Null),
    })
}

/// Bits per weight of a set of tensors given (bytes, elements).
fn bits_per_weight(items: impl Iterator<Item = (f64, u64)>) -> f64 {
    let (mut bytes, mut n) = (0f64, 0u64);
    for (b, count) in items {
        bytes += b;
        n += count;
    }
    if n == 0 {
        0.0
    } else {
        8.0 * bytes / n as f64
    }
}

/// Per output type: stats of the tensors that carried a residual.
fn per_type(outcomes: &[Row]) -> BTreeMap<String, (usize, ErrorStats)> {
    let mut m: BTreeMap<String, (usize, ErrorStats)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.has_residual) {
        if let Some(s) = &o.stats {
            let e = m.entry(o.type_out.clone()).or_default();
            e.0 += 1;
            e.1.merge(s);
        }
    }
    m
}

/// The full report as JSON.
pub fn to_json(command: &str, inputs: Value, outcomes: &[Row]) -> Value {
    let tensors: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let mut t = json!({
                "name": o.name,
                "type_in": o.type_in,
                "type_out": o.type_out,
                "n_elements": o.n_elements,
                "copied": o.copied,
                "residual": o.has_residual,
            });
            if let Some(s) = &o.stats {
                t["error"] = stats_json(s);
            }
            if let Some(w) = &o.search {
                t["search"] = wins_json(w);
            }
            t
        })
        .collect();
    let mut total = ErrorStats::default();
    for s in outcomes
        .iter()
        .filter(|o| o.has_residual)
        .filter_map(|o| o.stats.as_ref())
    {
        total.merge(s);
    }
    let by_type: serde_json::Map<String, Value> = per_type(outcomes)
        .into_iter()
        .map(|(k, (n, s))| (k, json!({"tensors": n, "error": stats_json(&s)})))
        .collect();
    let search = (inputs.get("strategy").and_then(|v| v.as_str()) == Some("search"))
        .then(|| search_json(outcomes));
    let mut summary = json!({
        "tensors": outcomes.len(),
        "with_residual": outcomes.iter().filter(|o| o.has_residual).count(),
        "copied": outcomes.iter().filter(|o| o.copied).count(),
        "bits_per_weight_in": bits_per_weight(outcomes.iter().map(|o| (o.bytes_in, o.n_elements))),
        "bits_per_weight_out": bits_per_weight(outcomes.iter().map(|o| (o.bytes_out, o.n_elements))),
        "residual_tensors": stats_json(&total),
        "by_output_type": by_type,
    });
    if let Some(s) = search {
        summary["search"] = s;
    }
    json!({
        "command": command,
        "inputs": inputs,
        "summary": summary,
        "tensors": tensors,
    })
}

/// Counts and shares of one set of search wins.
fn wins_json(w: &SearchWins) -> Value {
    let share = |n: u64| {
        if w.total() == 0 {
            Value::Null
        } else {
            json!(n as f64 / w.total() as f64)
        }
    };
    json!({
        "blocks": w.total(),
        "base": w.base,
        "fresh": w.fresh,
        "rerounded": w.rerounded,
        "share_base": share(w.base),
        "share_fresh": share(w.fresh),
        "share_rerounded": share(w.rerounded),
    })
}

/// Search wins per output type, in total, and the re-encoded tensors that
/// were not searched, with the reason.
fn search_json(outcomes: &[Row]) -> Value {
    let (total, by_type) = search_totals(outcomes);
    let fallback: Vec<Value> = search_fallbacks(outcomes)
        .into_iter()
        .map(|(name, why)| json!({"name": name, "reason": why}))
        .collect();
    json!({
        "total": wins_json(&total),
        "by_output_type": by_type
            .iter()
            .map(|(k, (n, w))| (k.clone(), json!({"tensors": n, "wins": wins_json(w)})))
            .collect::<serde_json::Map<String, Value>>(),
        "fresh_fallback": fallback,
    })
}

/// All search wins, and per output type (tensors, wins).
fn search_totals(outcomes: &[Row]) -> (SearchWins, BTreeMap<String, (usize, SearchWins)>) {
    let mut total = SearchWins::default();
    let mut by_type: BTreeMap<String, (usize, SearchWins)> = BTreeMap::new();
    for o in outcomes {
        if let Some(w) = &o.search {
            total.merge(w);
            let e = by_type.entry(o.type_out.clone()).or_default();
            e.0 += 1;
            e.1.merge(w);
        }
    }
    (total, by_type)
}

/// Re-encoded tensors `--strategy search` wrote fresh, and why.
pub fn search_fallbacks(outcomes: &[Row]) -> Vec<(String, &'static str)> {
    outcomes
        .iter()
        .filter(|o| !o.copied && o.search.is_none())
        .map(|o| {
            let why = if o.type_in != o.type_out {
                "output type differs from the base's: only fresh encoding is possible"
            } else if o.type_out == "int8" {
                "LLM.int8 rows are requantized fresh: only NF4/FP4 blocks are searched"
            } else if kept_grid(&o.type_out) {
                "the base's scales and zero points are kept: rounding to the nearest code on them is already nearest for every weight"
            } else if o.type_out.starts_with("fp8") {
                "--keep-scales: every FP8 code is already the nearest on the base's scales"
            } else {
                "float type: the fresh encoding is already the nearest value"
            };
            (o.name.clone(), why)
        })
        .collect()
}

/// Output types written on the base's own grid (GPTQ/AWQ, compressed-tensors
/// pack-quantized): codes re-rounded to the nearest grid value, which no
/// other candidate on that grid can beat.
fn kept_grid(label: &str) -> bool {
    label.starts_with("gptq-") || label.starts_with("awq-") || label.starts_with("ct-int")
}

/// The `--strategy search` summary: how often each candidate won, per
/// output type, and which tensors fell back to fresh.
pub fn search_text(outcomes: &[Row]) -> String {
    let mut s = String::new();
    let (total, by_type) = search_totals(outcomes);
    let pct = |n: u64, w: &SearchWins| 100.0 * n as f64 / w.total().max(1) as f64;
    let _ = writeln!(
        s,
        "search: base block kept in {:.2} %, fresh {:.2} %, re-rounded {:.2} % of {} blocks",
        pct(total.base, &total),
        pct(total.fresh, &total),
        pct(total.rerounded, &total),
        total.total()
    );
    for (ty, (n, w)) in &by_type {
        let _ = writeln!(
            s,
            "  {:<8} {:>4} tensor(s): base {:>6.2} %, fresh {:>6.2} %, re-rounded {:>6.2} % of {} blocks",
            ty,
            n,
            pct(w.base, w),
            pct(w.fresh, w),
            pct(w.rerounded, w),
            w.total()
        );
    }
    let fb = search_fallbacks(outcomes);
    if !fb.is_empty() {
        let mut reasons: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, why) in &fb {
            reasons.entry(why).or_default().push(name);
        }
        for (why, names) in reasons {
            let shown: Vec<&str> = names.iter().take(4).copied().collect();
            let _ = writeln!(
                s,
                "  encoded fresh, not searched: {} tensor(s) ({}{}): {why}",
                names.len(),
                shown.join(", "),
                if names.len() > 4 { ", …" } else { "" }
            );
        }
    }
    s
}

fn fmt_opt(x: Option<f64>, prec: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.prec$}"),
        Some(v) if v > 0.0 => "inf".into(),
        Some(_) => "-inf".into(),
        None => "-".into(),
    }
}

/// A human summary: worst tensors, per-type retention, totals.
pub fn to_text(outcomes: &[Row], worst: usize) -> String {
    let mut s = String::new();
    let changed: Vec<&Row> = outcomes.iter().filter(|o| o.stats.is_some()).collect();
    let copied = outcomes.iter().filter(|o| o.copied).count();
    let _ = writeln!(
        s,
        "{} tensors: {} re-encoded, {} copied unchanged, {} with a residual",
        outcomes.len(),
        changed.len(),
        copied,
        outcomes.iter().filter(|o| o.has_residual).count()
    );
    let _ = writeln!(
        s,
        "bits per weight: {:.3} in, {:.3} out",
        bits_per_weight(outcomes.iter().map(|o| (o.bytes_in, o.n_elements))),
        bits_per_weight(outcomes.iter().map(|o| (o.bytes_out, o.n_elements)))
    );
    let types = per_type(outcomes);
    if !types.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<8} {:>7} {:>11} {:>9} {:>9} {:>10}",
            "type", "tensors", "rel. RMSE", "cosine", "SNR dB", "retention"
        );
        for (ty, (n, st)) in &types {
            let _ = writeln!(
                s,
                "{:<8} {:>7} {:>11.3e} {:>9.6} {:>9.2} {:>10}",
                ty,
                n,
                st.relative_rmse(),
                st.cosine(),
                st.snr_db(),
                fmt_opt(st.retention(), 4)
            );
        }
    }
    let mut ranked = changed.clone();
    ranked.sort_by(|a, b| {
        let ra = a.stats.as_ref().map_or(0.0, |s| s.relative_rmse());
        let rb = b.stats.as_ref().map_or(0.0, |s| s.relative_rmse());
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal)
    });
    if !ranked.is_empty() {
        let _ = writeln!(
            s,
            "\nworst tensors by relative RMSE:\n{:<40} {:>7} {:>7} {:>11} {:>11} {:>9} {:>10}",
            "tensor", "in", "out", "rel. RMSE", "max abs", "SNR dB", "retention"
        );
        for o in ranked.iter().take(worst) {
            let st = o.stats.as_ref().expect("filtered");
            let _ = writeln!(
                s,
                "{:<40} {:>7} {:>7} {:>11.3e} {:>11.3e} {:>9.2} {:>10}",
                o.name,
                o.type_in,
                o.type_out,
                st.relative_rmse(),
                st.max_abs(),
                st.snr_db(),
                fmt_opt(st.retention(), 4)
            );
        }
    }
    s
}

/// Below this share of the residual surviving requantization, `apply` warns.
pub const LOW_RETENTION: f64 = 0.5;

/// Adds a warning the run printed to the report's summary (`warnings`);
/// reports of runs without one keep their bytes.
pub fn add_warning(report: &mut Value, warning: Option<&str>) {
    if let Some(w) = warning {
        match report["summary"]["warnings"].as_array_mut() {
            Some(list) => list.push(json!(w)),
            None => report["summary"]["warnings"] = json!([w]),
        }
    }
}

/// A warning when most of the residual was rounded away, with the numbers
/// and what would keep it: when the pooled retention is below
/// [`LOW_RETENTION`], or when most tensors with a residual are. The pooled
/// retention weighs tensors by ‖Δ‖², so one large tensor that keeps its
/// residual (an embedding written in a finer type) can hide that the
/// layers lost theirs, and a model's behaviour follows the layers too (a
/// real fine-tune on gemma-3-270m Q4_K_M: pooled 0.71, 31 % of the
/// fine-tune's gain kept).
///
/// `remedy` names the option that would keep the residual (with its cost);
/// without one the advice is a finer type.
pub fn retention_warning(outcomes: &[Row], remedy: Option<&str>) -> Option<String> {
    let mut total = ErrorStats::default();
    let mut lost: Vec<(&str, f64)> = Vec::new();
    let mut measured = 0usize;
    for o in outcomes.iter().filter(|o| o.has_residual) {
        if let Some(s) = &o.stats {
            total.merge(s);
            if let Some(r) = s.retention() {
                measured += 1;
                if r < LOW_RETENTION {
                    lost.push((o.type_out.as_str(), r));
                }
            }
        }
    }
    let retention = total.retention()?;
    let most_tensors_lost = 2 * lost.len() > measured;
    if retention >= LOW_RETENTION && !most_tensors_lost {
        return None;
    }
    let mut types: Vec<&str> = lost.iter().map(|(t, _)| *t).collect();
    types.sort_unstable();
    types.dedup();
    let default_remedy = "Writing those tensors in a finer type keeps it \
         (e.g. --type q8_0, or a larger mix such as q6_k / q5_k_m), at the cost of file size";
    let what = if retention < LOW_RETENTION {
        format!(
            "only {:.0} % of the residual survived requantization (retention {retention:.3}; {} tensor(s) below {LOW_RETENTION} in {})",
            retention * 100.0,
            lost.len(),
            types.join(", ")
        )
    } else {
        format!(
            "in {} of {measured} tensors less than {LOW_RETENTION} of the residual survived requantization \
             ({}; the pooled retention {retention:.3} weighs tensors by ‖Δ‖², and those that kept theirs dominate it)",
            lost.len(),
            types.join(", ")
        )
    };
    Some(format!(
        "{what}: the output's rounding step is larger than most of Δ. {}",
        remedy.unwrap_or(default_remedy)
    ))
}

/// Write any JSON report, pretty-printed.
pub fn write_value(path: &std::path::Path, value: &Value) -> crate::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("report serializes");
    crate::format::output::write_atomic(path, (text + "\n").as_bytes())
}

/// Whether `path` names an HTML page (`.html`, `.htm`) rather than JSON.
pub fn is_html(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"))
}

/// Write a report as its path's extension asks: an HTML page for `.html`,
/// pretty JSON otherwise.
pub fn write_report(path: &std::path::Path, value: &Value) -> crate::Result<()> {
    if is_html(path) {
        crate::format::output::write_atomic(path, html::to_html(value).as_bytes())
    } else {
        write_value(path, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor of `n` weights with Δ = `d` everywhere, whose output kept
    /// the share `kept` of it.
    fn row(n: usize, d: f32, kept: f32) -> Row {
        let base = vec![1.0f32; n];
        let delta = vec![d; n];
        let target: Vec<f32> = base.iter().map(|b| b + d).collect();
        let out: Vec<f32> = base.iter().map(|b| b + kept * d).collect();
        let mut s = ErrorStats::default();
        s.accumulate_residual(&base, &delta, &target, &out);
        Row {
            name: format!("t{n}"),
            type_in: "q4_K".into(),
            type_out: "q4_K".into(),
            n_elements: n as u64,
            bytes_in: 0.0,
            bytes_out: 0.0,
            copied: false,
            has_residual: true,
            stats: Some(s),
            search: None,
        }
    }

    #[test]
    fn warns_when_the_pooled_retention_or_most_tensors_lose_the_residual() {
        // Pooled below the threshold.
        let w = retention_warning(&[row(100, 0.1, 0.1), row(100, 0.1, 0.2)], None).unwrap();
        assert!(w.starts_with("only 15 % of the residual survived"), "{w}");
        // One large tensor keeps its residual (pooled 0.97), three small
        // ones lose theirs: most tensors lost it.
        let rows = [
            row(10_000, 0.1, 1.0),
            row(100, 0.1, 0.0),
            row(100, 0.1, 0.05),
            row(100, 0.1, 0.1),
        ];
        let w = retention_warning(&rows, None).unwrap();
        assert!(
            w.starts_with("in 3 of 4 tensors less than 0.5 of the residual survived"),
            "{w}"
        );
        assert!(w.contains("pooled retention 0.9"), "{w}");
        // Half of the tensors or fewer, and a pooled retention above the
        // threshold: no warning.
        let rows = [
            row(10_000, 0.1, 1.0),
            row(100, 0.1, 1.0),
            row(100, 0.1, 0.0),
            row(100, 0.1, 0.1),
        ];
        assert_eq!(retention_warning(&rows, None), None);
    }

    #[test]
    fn a_printed_warning_is_in_the_report_and_a_run_without_one_keeps_its_bytes() {
        let rows = [row(100, 0.1, 0.1)];
        let mut report = to_json("apply", json!({}), &rows);
        let before = report.to_string();
        add_warning(&mut report, None);
        assert_eq!(report.to_string(), before);
        let w = retention_warning(&rows, None);
        add_warning(&mut report, w.as_deref());
        add_warning(&mut report, Some("second"));
        let list = report["summary"]["warnings"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].as_str(), w.as_deref());
        assert_eq!(list[1], "second");
    }
}
