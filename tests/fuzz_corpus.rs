//! Replays the minimized fuzz corpus (fuzz/corpus/<target>/, kept by
//! cargo-fuzz runs, crashes found included) through the same entry points
//! the fuzz targets call, on stable Rust: a regression test for every input
//! that ever crashed, and a quick sweep of the parsers' corners.

use std::path::Path;

use qresidual::fuzz_entry;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| entry(&data));
        assert!(r.is_ok(), "{} panics", path.display());
        n += 1;
    }
    assert!(n > 0, "{} is empty", dir.display());
}

#[test]
fn gguf_header() {
    replay("gguf_header", fuzz_entry::gguf);
}

#[test]
fn st_header() {
    replay("st_header", fuzz_entry::st_header);
}

#[test]
fn st_index() {
    replay("st_index", fuzz_entry::st_index);
}

#[test]
fn dequantize() {
    replay("dequantize", fuzz_entry::dequantize);
}

#[test]
fn bnb_dequantize() {
    replay("bnb_dequantize", fuzz_entry::bnb_dequantize);
}

#[test]
fn bnb_quant_state() {
    replay("bnb_quant_state", fuzz_entry::bnb_quant_state);
}
