//! The report as one self-contained HTML page: the summary, a heat map per
//! measure (layer × tensor class), the per-type aggregates, the worst
//! tensors and the budget plan. Rendered from the JSON report (apply,
//! compare or adapter), so the page shows the same numbers; no script, no
//! font and no image is fetched.
//!
//! Every number the page shows from the report sits in an element with
//! `data-value` holding the JSON value exactly as the JSON report writes it
//! (and `data-key` or `data-tensor`/`data-metric` saying which), so a test can
//! hold the page against the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// A heat-mapped measure of the per-tensor statistics.
struct Measure {
    key: &'static str,
    title: &'static str,
    /// Higher is better (retention, held share) or lower is (error).
    higher_is_better: bool,
    /// Colour on a log scale (errors span decades).
    log: bool,
}

const MEASURES: [Measure; 3] = [
    Measure {
        key: "retention",
        title: "Retention of the residual (1: kept, 0: rounded away)",
        higher_is_better: true,
        log: false,
    },
    Measure {
        key: "relative_rmse",
        title: "Relative RMSE against the reference",
        higher_is_better: false,
        log: true,
    },
    Measure {
        key: "share",
        title: "Share of ‖αΔ‖² the adapter holds",
        higher_is_better: true,
        log: false,
    },
];

/// One tensor of any report kind: its name, types and statistics object.
struct Entry<'a> {
    name: &'a str,
    type_in: &'a str,
    type_out: &'a str,
    stats: Option<&'a Value>,
}

/// The tensors of an apply, compare or adapter report.
fn entries(report: &Value) -> Vec<Entry<'_>> {
    fn text(v: &Value) -> &str {
        v.as_str().unwrap_or("")
    }
    let compare = report["command"] == "compare";
    let adapter = report["strategy"] == "adapter";
    report["tensors"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| Entry {
                    name: text(&t["name"]),
                    type_in: text(if compare { &t["type_a"] } else { &t["type_in"] }),
                    type_out: text(if compare {
                        &t["type_b"]
                    } else {
                        &t["type_out"]
                    }),
                    stats: if compare || adapter {
                        Some(t)
                    } else {
                        t.get("error")
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A finite number of a statistics object.
fn number(stats: Option<&Value>, key: &str) -> Option<f64> {
    stats?.get(key)?.as_f64().filter(|x| x.is_finite())
}

/// The layer and tensor class of a name: `blk.3.attn_q.weight` →
/// (3, `attn_q`), `model.layers.3.self_attn.q_proj.weight` →
/// (3, `self_attn.q_proj`); tensors outside the layers have no layer.
pub fn layer_and_class(name: &str) -> (Option<u64>, String) {
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    let parts: Vec<&str> = stem.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if let Ok(layer) = p.parse::<u64>() {
            if i + 1 < parts.len() {
                return (Some(layer), parts[i + 1..].join("."));
            }
        }
    }
    (None, stem.to_string())
}

/// Escape text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A JSON value as the page's `data-value`: the JSON text of the value.
fn raw(v: &Value) -> String {
    esc(&v.to_string())
}

/// A number for a reader.
fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(x)) if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) => format!("{x:.4e}"),
            (_, _, Some(x)) => format!("{x:.6}"),
            _ => n.to_string(),
        },
        Value::Null => "–".into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// A cell holding one number of the report.
fn value_cell(attrs: &str, v: &Value) -> String {
    format!(
        "<td class=\"n\" {attrs} data-value=\"{}\">{}</td>",
        raw(v),
        shown(v)
    )
}

/// The viridis palette at `t` in [0, 1] (dark purple → yellow).
pub fn viridis(t: f64) -> (u8, u8, u8) {
    const STOPS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 45.0, 123.0),
        (59.0, 82.0, 139.0),
        (44.0, 114.0, 142.0),
        (33.0, 145.0, 140.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Where `x` lies between the extremes, 1 being the best end.
fn goodness(m: &Measure, x: f64, lo: f64, hi: f64) -> f64 {
    let f = |v: f64| {
        if m.log {
            v.max(lo).max(f64::MIN_POSITIVE).log10()
        } else {
            v
        }
    };
    let (l, h, v) = (f(lo), f(hi), f(x));
    let t = if h > l { (v - l) / (h - l) } else { 1.0 };
    if m.higher_is_better {
        t
    } else {
        1.0 - t
    }
}

/// One heat-map cell: tensor class, tensor, value.
type Cell<'e, 'a> = (String, &'e Entry<'a>, f64);

/// The heat map of one measure: layers down, tensor classes across.
fn heat_map(m: &Measure, es: &[Entry]) -> Option<String> {
    let cells: Vec<(&Entry, f64)> = es
        .iter()
        .filter_map(|e| number(e.stats, m.key).map(|x| (e, x)))
        .collect();
    if cells.is_empty() {
        return None;
    }
    // On a log scale the range is that of the positive values (an exact
    // zero takes the best colour).
    let (lo, hi) = cells
        .iter()
        .map(|(_, x)| *x)
        .filter(|x| !m.log || *x > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
            (l.min(x), h.max(x))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let (rows, classes) = heat_grid(&cells);
    let (cell, label_w, head_h) = (18usize, 70usize, 110usize);
    let legend_w = 20 * 8;
    let w = (label_w + cell * classes.len()).max(label_w + legend_w + 150) + 10;
    let h = head_h + cell * rows.len() + 40;
    let mut s = String::new();
    let _ = write!(
        s,
        "<h2>{}</h2>\n<svg class=\"heat\" data-metric=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\">\n",
        esc(m.title),
        m.key
    );
    for (j, c) in classes.iter().enumerate() {
        let x = label_w + j * cell + cell / 2 + 4;
        let _ = writeln!(
            s,
            "<text transform=\"translate({x},{}) rotate(-60)\">{}</text>",
            head_h - 4,
            esc(c)
        );
    }
    for (i, ((kind, layer), items)) in rows.iter().enumerate() {
        let y = head_h + i * cell;
        let label = if *kind == 0 {
            layer.to_string()
        } else {
            "other".into()
        };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            label_w - 6,
            y + 13
        );
        for (class, e, x) in items {
            let j = classes.iter().position(|c| c == class).expect("listed");
            let (r, g, b) = viridis(goodness(m, *x, lo, hi));
            let v = &e.stats.expect("has a number")[m.key];
            let _ = writeln!(
                s,
                "<rect class=\"cell\" x=\"{}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"#{r:02x}{g:02x}{b:02x}\" data-tensor=\"{}\" data-metric=\"{}\" data-value=\"{}\"><title>{}: {}</title></rect>",
                label_w + j * cell,
                esc(e.name),
                m.key,
                raw(v),
                esc(e.name),
                shown(v)
            );
        }
    }
    legend(
        &mut s,
        m,
        (lo, hi),
        label_w,
        head_h + cell * rows.len() + 12,
    );
    s.push_str("</svg>\n");
    Some(s)
}

/// The cells by row, keyed (0, layer) for layers and (1, 0) for the tensors
/// outside them, and the tensor classes across: layer classes first, in the
/// order they appear, then the others.
#[allow(clippy::type_complexity)]
fn heat_grid<'e, 'a>(
    cells: &[(&'e Entry<'a>, f64)],
) -> (BTreeMap<(u8, u64), Vec<Cell<'e, 'a>>>, Vec<String>) {
    let mut rows: BTreeMap<(u8, u64), Vec<Cell>> = BTreeMap::new();
    for (e, x) in cells {
        let (layer, class) = layer_and_class(e.name);
        let key = layer.map_or((1, 0), |l| (0, l));
        rows.entry(key).or_default().push((class, e, *x));
    }
    let mut classes: Vec<String> = Vec::new();
    for (class, _, _) in rows.values().flatten() {
        if !classes.contains(class) {
            classes.push(class.clone());
        }
    }
    (rows, classes)
}

/// The colour scale under a heat map, worst to best, at `legend_y`.
fn legend(s: &mut String, m: &Measure, (lo, hi): (f64, f64), label_w: usize, legend_y: usize) {
    let (best, worst) = if m.higher_is_better {
        (hi, lo)
    } else {
        (lo, hi)
    };
    for k in 0..20 {
        let (r, g, b) = viridis(k as f64 / 19.0);
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{legend_y}\" width=\"8\" height=\"10\" fill=\"#{r:02x}{g:02x}{b:02x}\"/>",
            label_w + k * 8
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\">{}{}</text>",
        label_w - 6,
        legend_y + 9,
        shown(&serde_json::json!(worst)),
        label_w + 20 * 8 + 6,
        legend_y + 9,
        shown(&serde_json::json!(best)),
        if m.log { " (log scale)" } else { "" }
    );
}

/// The summary table: every scalar of `summary`, and of its statistics objects.
fn summary_table(summary: &Value) -> String {
    let mut s = String::from("<table class=\"summary\">\n");
    let Some(obj) = summary.as_object() else {
        return String::new();
    };
    for (k, v) in obj {
        match v {
            Value::Object(inner) if k != "by_output_type" && k != "search" => {
                for (ik, iv) in inner.iter().filter(|(_, iv)| !iv.is_object()) {
                    let key = format!("{k}.{ik}");
                    let _ = writeln!(
                        s,
                        "<tr><th>{}</th>{}</tr>",
                        esc(&key),
                        value_cell(&format!("data-key=\"{}\"", esc(&key)), iv)
                    );
                }
            }
            Value::Object(_) | Value::Array(_) => {}
            _ => {
                let _ = writeln!(
                    s,
                    "<tr><th>{}</th>{}</tr>",
                    esc(k),
                    value_cell(&format!("data-key=\"{}\"", esc(k)), v)
                );
            }
        }
    }
    s + "</table>\n"
}

const STAT_COLUMNS: [(&str, &str); 6] = [
    ("relative_rmse", "rel. RMSE"),
    ("rmse", "RMSE"),
    ("max_abs", "max abs"),
    ("cosine", "cosine"),
    ("snr_db", "SNR dB"),
    ("retention", "retention"),
];

/// Per output type: tensors and the merged statistics (`summary.by_output_type`).
fn per_type_table(summary: &Value) -> String {
    let Some(types) = summary["by_output_type"]
        .as_object()
        .filter(|t| !t.is_empty())
    else {
        return String::new();
    };
    let mut s = String::from("<h2>Per output type (tensors with a residual)</h2>\n<table>\n<tr><th>type</th><th>tensors</th>");
    for (_, title) in STAT_COLUMNS {
        let _ = write!(s, "<th>{title}</th>");
    }
    s += "</tr>\n";
    for (ty, v) in types {
        let _ = write!(s, "<tr><td>{}</td>", esc(ty));
        let key = |k: &str| format!("data-key=\"by_output_type.{}.{k}\"", esc(ty));
        s += &value_cell(&key("tensors"), &v["tensors"]);
        for (k, _) in STAT_COLUMNS {
            s += &value_cell(&key(k), &v["error"][k]);
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// The `worst` tensors by relative RMSE.
fn worst_table(es: &[Entry], worst: usize) -> String {
    let mut ranked: Vec<(&Entry, f64)> = es
        .iter()
        .filter_map(|e| number(e.stats, "relative_rmse").map(|x| (e, x)))
        .collect();
    if ranked.is_empty() {
        return String::new();
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut s = format!(
        "<h2>Worst {} tensors by relative RMSE</h2>\n<table>\n<tr><th>tensor</th><th>in</th><th>out</th>",
        worst.min(ranked.len())
    );
    for (_, title) in STAT_COLUMNS {
        let _ = write!(s, "<th>{title}</th>");
    }
    s += "</tr>\n";
    for (e, _) in ranked.iter().take(worst) {
        let stats = e.stats.expect("ranked by a number");
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            esc(e.name),
            esc(e.type_in),
            esc(e.type_out)
        );
        for (k, _) in STAT_COLUMNS {
            s += &value_cell(
                &format!("data-tensor=\"{}\" data-metric=\"{k}\"", esc(e.name)),
                &stats[k],
            );
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// The budget plan: bytes, and how many tensors moved from each type to each.
fn budget_section(budget: &Value) -> String {
    if !budget.is_object() {
        return String::new();
    }
    let mut s = String::from("<h2>Budget plan</h2>\n<table class=\"summary\">\n");
    for k in [
        "max_bytes",
        "base_bytes",
        "predicted_bytes",
        "predicted_mean_rel_error",
        "keep_mean_rel_error",
        "min_retention",
    ] {
        let _ = writeln!(
            s,
            "<tr><th>{k}</th>{}</tr>",
            value_cell(&format!("data-key=\"budget.{k}\""), &budget[k])
        );
    }
    s += "</table>\n";
    let mut moves: BTreeMap<(String, String), (usize, f64)> = BTreeMap::new();
    for t in budget["tensors"].as_array().into_iter().flatten() {
        let (from, to) = (
            t["type_in"].as_str().unwrap_or(""),
            t["type_out"].as_str().unwrap_or(""),
        );
        let bytes = t["candidates"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == to)
            .and_then(|c| c["bytes"].as_f64())
            .unwrap_or(0.0);
        let e = moves.entry((from.to_string(), to.to_string())).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    if !moves.is_empty() {
        s += "<table>\n<tr><th>type before</th><th>type after</th><th>tensors</th><th>bytes after</th></tr>\n";
        for ((from, to), (n, bytes)) in moves {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{bytes:.0}</td></tr>",
                esc(&from),
                esc(&to)
            );
        }
        s += "</table>\n";
    }
    for w in budget["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "<p class=\"warn\">{}</p>", shown(w));
    }
    s
}

/// Tensors listed only in one model, or with different shapes (compare).
fn unpaired_section(report: &Value) -> String {
    let mut s = String::new();
    for (key, title) in [
        ("only_in_a", "Only in A"),
        ("only_in_b", "Only in B"),
        ("shape_differs", "Shapes differ"),
    ] {
        if let Some(names) = report[key].as_array().filter(|n| !n.is_empty()) {
            let list: Vec<String> = names.iter().map(shown).collect();
            let _ = writeln!(
                s,
                "<p><b>{title}</b> ({}): {}</p>",
                names.len(),
                list.join(", ")
            );
        }
    }
    s
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;background:#fff}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}\
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-family:monospace}\
svg.heat{display:block;margin:8px 0 20px}.warn{color:#a40}code{background:#f3f3f3;padding:1px 4px}";

/// The report as one HTML page.
pub fn to_html(report: &Value) -> String {
    let es = entries(report);
    let command = report["command"].as_str().unwrap_or("report");
    let title = match (command, report["strategy"].as_str()) {
        ("compare", _) => "qresidual compare".to_string(),
        (c, Some("adapter")) => format!("qresidual {c} (adapter)"),
        (c, _) => format!("qresidual {c}"),
    };
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    if let Some(inputs) = report["inputs"].as_object() {
        let items: Vec<String> = inputs
            .iter()
            .map(|(k, v)| format!("{}: <code>{}</code>", esc(k), shown(v)))
            .collect();
        let _ = writeln!(s, "<p>{}</p>", items.join(" · "));
    }
    s += &summary_table(&report["summary"]);
    for m in &MEASURES {
        if let Some(map) = heat_map(m, &es) {
            s += &map;
        }
    }
    s += &per_type_table(&report["summary"]);
    s += &worst_table(&es, 20);
    s += &budget_section(&report["budget"]);
    s += &unpaired_section(report);
    s + "</body>\n</html>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_layer_and_class() {
        assert_eq!(
            layer_and_class("blk.3.attn_q.weight"),
            (Some(3), "attn_q".into())
        );
        assert_eq!(
            layer_and_class("model.layers.12.self_attn.q_proj.weight"),
            (Some(12), "self_attn.q_proj".into())
        );
        assert_eq!(
            layer_and_class("token_embd.weight"),
            (None, "token_embd".into())
        );
        assert_eq!(
            layer_and_class("blk.3.ffn_down.bias"),
            (Some(3), "ffn_down.bias".into())
        );
    }

    #[test]
    fn palette_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), (68, 1, 84));
        assert_eq!(viridis(1.0), (253, 231, 37));
        assert_eq!(viridis(f64::NAN), (68, 1, 84));
    }

    #[test]
    fn adapter_reports_map_the_share_held() {
        let r = serde_json::json!({
            "command": "apply", "strategy": "adapter",
            "summary": {"tensors": 2, "share": 0.5},
            "tensors": [
                {"name": "blk.0.attn_q.weight", "share": 0.25},
                {"name": "blk.1.attn_q.weight", "share": 0.75},
            ],
        });
        let page = to_html(&r);
        assert!(page.contains("<svg class=\"heat\" data-metric=\"share\""));
        assert_eq!(page.matches("class=\"cell\"").count(), 2);
        assert!(page.contains(
            "data-tensor=\"blk.1.attn_q.weight\" data-metric=\"share\" data-value=\"0.75\""
        ));
        assert!(!page.contains("data-metric=\"retention\""));
    }

    #[test]
    fn text_is_escaped() {
        let r = serde_json::json!({"command": "apply", "inputs": {"base": "<a&b>"}, "tensors": []});
        let page = to_html(&r);
        assert!(page.contains("&lt;a&amp;b&gt;"));
        assert!(!page.contains("<a&b>"));
    }
}
