//! `mix::plan_types` against llama.cpp's own quantizer: every model in
//! fixtures/mix/*.json (written by fixtures/gen_mix_expectations.py) holds the
//! type llama.cpp gave each tensor for every mix, and for a few `--pure` runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qresidual::model::mix::{
    file_type, llama_order, plan_types, Mix, ModelFacts, Target, TensorDesc,
};
use qresidual::quant::GgmlType;
use serde::Deserialize;

#[derive(Deserialize)]
struct Tensor {
    name: String,
    ne: Vec<u64>,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Deserialize)]
struct Pure {
    ftype: u32,
    types: Vec<String>,
}

#[derive(Deserialize)]
struct Fixture {
    model: String,
    arch: String,
    metadata: BTreeMap<String, u64>,
    tensors: Vec<Tensor>,
    expected: BTreeMap<String, Vec<String>>,
    file_type: BTreeMap<String, u32>,
    expected_pure: BTreeMap<String, Pure>,
    llama_order: Vec<String>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mix");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"))
}

fn facts(f: &Fixture) -> ModelFacts {
    ModelFacts::from_metadata(|k| f.metadata.get(k).copied(), &f.arch)
}

fn descs(f: &Fixture) -> Vec<TensorDesc<'_>> {
    f.tensors
        .iter()
        .map(|t| TensorDesc {
            name: &t.name,
            ty: ty(&t.ty),
            ne: &t.ne,
        })
        .collect()
}

/// The first tensor whose planned type differs, as a readable message.
fn first_mismatch(f: &Fixture, what: &str, got: &[GgmlType], want: &[String]) -> Option<String> {
    assert_eq!(got.len(), want.len(), "{}/{what}: tensor count", f.model);
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != ty(&want[i])).collect();
    let &i = bad.first()?;
    let t = &f.tensors[i];
    Some(format!(
        "{}/{what}: {} (ne {:?}, {}) expected {} got {} ({} mismatches)",
        f.model,
        t.name,
        t.ne,
        t.ty,
        want[i],
        got[i].name(),
        bad.len()
    ))
}

#[test]
fn every_mix_matches_llama_cpp_on_every_model() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in fixtures() {
        let facts = facts(&f);
        let tensors = descs(&f);
        for mix in Mix::ALL {
            let want = f
                .expected
                .get(mix.name())
                .unwrap_or_else(|| panic!("{}: no expectation for {mix}", f.model));
            let target = Target::Mix(*mix);
            match plan_types(&target, &facts, &tensors) {
                Ok(got) => failures.extend(first_mismatch(&f, mix.name(), &got, want)),
                Err(e) => failures.push(format!("{}/{mix}: {e}", f.model)),
            }
            assert_eq!(
                file_type(&target),
                Some(f.file_type[mix.name()]),
                "{}/{mix}: general.file_type",
                f.model
            );
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= Mix::ALL.len());
}

#[test]
fn pure_types_match_llama_cpp() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let facts = facts(&f);
        let tensors = descs(&f);
        assert!(!f.expected_pure.is_empty(), "{}: no --pure runs", f.model);
        for (name, pure) in &f.expected_pure {
            let target = Target::parse(name).unwrap();
            assert_eq!(target, Target::Type(ty(name)));
            assert_eq!(
                file_type(&target),
                Some(pure.ftype),
                "{}/pure {name}",
                f.model
            );
            let got = plan_types(&target, &facts, &tensors).unwrap();
            failures.extend(first_mismatch(
                &f,
                &format!("pure {name}"),
                &got,
                &pure.types,
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn keep_returns_input_types() {
    for f in fixtures() {
        let tensors = descs(&f);
        let got = plan_types(&Target::Keep, &facts(&f), &tensors).unwrap();
        let want: Vec<GgmlType> = tensors.iter().map(|t| t.ty).collect();
        assert_eq!(got, want, "{}", f.model);
    }
}

#[test]
fn llama_order_matches_llama_cpp_output_order() {
    for f in fixtures() {
        let tensors = descs(&f);
        let got: Vec<&str> = llama_order(&tensors)
            .into_iter()
            .map(|i| tensors[i].name)
            .collect();
        assert_eq!(got, f.llama_order, "{}", f.model);
    }
}

#[test]
fn q4_k_m_is_a_real_mix_on_the_fixtures() {
    // guards against fixtures that cannot tell a mix from --pure: llama.cpp's
    // Q4_K_M must have put at least three types on the dense llama model
    let f = fixtures()
        .into_iter()
        .find(|f| f.model == "llama_dense")
        .expect("llama_dense fixture");
    let mut kinds: Vec<&String> = f.expected["q4_k_m"].iter().collect();
    kinds.sort();
    kinds.dedup();
    assert!(kinds.len() >= 3, "{kinds:?}");
}
