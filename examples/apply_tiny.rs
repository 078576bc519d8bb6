//! Apply the shipped tiny residual to the shipped Q4_K_M base through the
//! library, then compare the result with the base and list the tensors
//! whose residual survived least.
//!
//!     cargo run --release --example apply_tiny [OUT.gguf]

use std::path::PathBuf;

use qresidual::apply::{apply, ApplyRequest, Strategy};
use qresidual::engine::log::Log;
use qresidual::model::Model;
use qresidual::ops::compare::compare;

fn main() -> qresidual::Result<()> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("qresidual-example-instruct.gguf"));
    let mut req = ApplyRequest::new(
        "fixtures/tiny/base-q4_k_m.gguf",
        "fixtures/tiny/residual-f16.safetensors",
        &out,
    );
    req.strategy = Strategy::Search;
    let result = apply(&req, &Log::stderr(false))?;

    let mut kept: Vec<(f64, &str)> = result
        .tensors
        .iter()
        .filter_map(|t| Some((t.stats?.retention()?, t.name.as_str())))
        .collect();
    kept.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("wrote {}", out.display());
    println!("lowest retention (1 = the residual survived, 0 = rounded away):");
    for (r, name) in kept.iter().take(5) {
        println!("  {name:<32} {r:.3}");
    }

    let base = Model::open(&req.base)?;
    let merged = Model::open(&out)?;
    let c = compare(&base, &merged)?;
    println!(
        "base vs merged: {} tensors, relative RMSE {:.4}",
        c.tensors.len(),
        c.total().relative_rmse()
    );
    Ok(())
}
