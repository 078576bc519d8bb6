//! Two models, tensor by tensor: how far the second is from the first.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::engine::chunks::map_chunks;
use crate::model::{decode_finite, pair_models, Model, Pairing};
use crate::quant::stats::ErrorStats;
use crate::report::stats_json;
use crate::{Error, Result};

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct TensorComparison {
    /// Name (the GGUF name when either model is GGUF).
    pub name: String,
    /// Encoding in the first model (`q4_K`, `F16`, `nf4`…).
    pub type_a: String,
    /// Encoding in the second model.
    pub type_b: String,
    /// B measured against A as the reference.
    pub stats: ErrorStats,
}

/// The result of comparing two models.
#[derive(Debug)]
pub struct Comparison {
    /// Per paired tensor, in A's order.
    pub tensors: Vec<TensorComparison>,
    /// How the tensors were paired (and which were not).
    pub pairing: Pairing,
}

impl Comparison {
    /// All compared weights together.
    pub fn total(&self) -> ErrorStats {
        let mut t = ErrorStats::default();
        for c in &self.tensors {
            t.merge(&c.stats);
        }
        t
    }
}

/// Compare `b` against `a` (the reference) on every tensor both hold.
pub fn compare(a: &Model, b: &Model) -> Result<Comparison> {
    let at = a.weights()?;
    let bt = b.weights()?;
    let pairing = pair_models(a, &at, b, &bt);
    if pairing.pairs.is_empty() {
        return Err(Error::Mismatch(format!(
            "{} and {} have no tensor of the same name and shape in common",
            a.path().display(),
            b.path().display()
        )));
    }
    let mut tensors = Vec::with_capacity(pairing.pairs.len());
    for p in &pairing.pairs {
        let ra = a.weight_rows(&at[p.a], p.perm_a)?;
        let rb = b.weight_rows(&bt[p.b], p.perm_b)?;
        let (oa, ob) = ((a.path(), at[p.a].name), (b.path(), bt[p.b].name));
        let parts = map_chunks(&[ra.as_ref(), rb.as_ref()], |first, n| {
            let x = decode_finite(ra.as_ref(), oa, p.shift_a, first, n)?;
            let y = decode_finite(rb.as_ref(), ob, p.shift_b, first, n)?;
            let mut s = ErrorStats::default();
            s.accumulate(&x, &y);
            Ok(s)
        })?;
        let mut stats = ErrorStats::default();
        for s in &parts {
            stats.merge(s);
        }
        tensors.push(TensorComparison {
            name: p.name.clone(),
            type_a: at[p.a].type_name.clone(),
            type_b: bt[p.b].type_name.clone(),
            stats,
        });
    }
    Ok(Comparison { tensors, pairing })
}

/// The comparison as JSON.
pub fn to_json(a: &str, b: &str, c: &Comparison) -> Value {
    json!({
        "command": "compare",
        "inputs": {"a": a, "b": b},
        "summary": {
            "tensors": c.tensors.len(),
            "identical": c.tensors.iter().filter(|t| t.stats.rmse() == 0.0).count(),
            "all": stats_json(&c.total()),
        },
        "only_in_a": c.pairing.only_a,
        "only_in_b": c.pairing.only_b,
        "shape_differs": c.pairing.shape_differs,
        "tensors": c.tensors.iter().map(|t| {
            let mut v = stats_json(&t.stats);
            v["name"] = json!(t.name);
            v["type_a"] = json!(t.type_a);
            v["type_b"] = json!(t.type_b);
            v
        }).collect::<Vec<_>>(),
    })
}

/// A human summary: totals, unpaired tensors, the `worst` tensors.
pub fn to_text(c: &Comparison, worst: usize) -> String {
    let mut s = String::new();
    let t = c.total();
    let identical = c.tensors.iter().filter(|t| t.stats.rmse() == 0.0).count();
    let _ = writeln!(
        s,
        "{} tensors compared ({} weights), {identical} identical",
        c.tensors.len(),
        t.n
    );
    let _ = writeln!(
        s,
        "all weights: RMSE {:.4e}, max abs {:.4e}, rel. RMSE {:.4e}, cosine {:.6}, SNR {:.2} dB",
        t.rmse(),
        t.max_abs(),
        t.relative_rmse(),
        t.cosine(),
        t.snr_db()
    );
    for (what, names) in [
        ("only in A", &c.pairing.only_a),
        ("only in B", &c.pairing.only_b),
        ("shape differs", &c.pairing.shape_differs),
    ] {
        if !names.is_empty() {
            let _ = writeln!(s, "{what} ({}): {}", names.len(), crate::model::list(names));
        }
    }
    let mut ranked: Vec<&TensorComparison> = c.tensors.iter().collect();
    ranked.sort_by(|x, y| {
        y.stats
            .relative_rmse()
            .partial_cmp(&x.stats.relative_rmse())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let _ = writeln!(
        s,
        "\nworst tensors by relative RMSE:\n{:<40} {:>6} {:>6} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "tensor", "A", "B", "RMSE", "max abs", "rel. RMSE", "cosine", "SNR dB"
    );
    for r in ranked.iter().take(worst) {
        let st = &r.stats;
        let _ = writeln!(
            s,
            "{:<40} {:>6} {:>6} {:>11.3e} {:>11.3e} {:>11.3e} {:>9.6} {:>9.2}",
            r.name,
            r.type_a,
            r.type_b,
            st.rmse(),
            st.max_abs(),
            st.relative_rmse(),
            st.cosine(),
            st.snr_db()
        );
    }
    s
}
