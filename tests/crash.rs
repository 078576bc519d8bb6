//! Crash safety: `apply` killed with SIGKILL in the middle of writing leaves
//! the target path empty or holding the previous complete file, and the next
//! run to the same target removes the dead run's temporary file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use qresidual::format::gguf::{GgufFile, GgufWriter, MetaValue, TensorSpec, WriterOptions};
use qresidual::quant::GgmlType;
use safetensors::Dtype;

const ROWS: u64 = 12_288;
const COLS: u64 = 4_096;

/// A ~200 MB F32 base (one big tensor, one small) and a residual for the
/// small one; requantized to q4_k on one thread, writing takes seconds.
fn big_inputs(d: &Dir) {
    let md = vec![(
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    )];
    let specs = vec![
        TensorSpec {
            name: "blk.0.ffn_down.weight".into(),
            ty: GgmlType::F32,
            ne: vec![COLS, ROWS],
        },
        TensorSpec {
            name: "blk.0.attn_q.weight".into(),
            ty: GgmlType::F32,
            ne: vec![256, 4],
        },
    ];
    let mut w =
        GgufWriter::create(&d.p("base.gguf"), &md, &specs, &WriterOptions::default()).unwrap();
    let row = f32_bytes(&ramp(COLS as usize, 0.01));
    let block: Vec<u8> = row.repeat(256);
    for _ in 0..ROWS / 256 {
        w.write(&block).unwrap();
    }
    w.write(&f32_bytes(&ramp(1024, 0.01))).unwrap();
    w.finish().unwrap();
    write_st(
        &d.p("res.safetensors"),
        &[(
            "blk.0.attn_q.weight",
            Dtype::F16,
            vec![4, 256],
            f16_bytes(&ramp(1024, 0.001)),
        )],
    );
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".qresidual-tmp"))
        .collect()
}

fn spawn_apply(d: &Dir, out: &Path) -> Child {
    Command::new(bin())
        .args([
            "apply",
            "-q",
            "--threads",
            "1",
            "--type",
            "q4_k",
            "--base",
            s(&d.p("base.gguf")),
            "--residual",
            s(&d.p("res.safetensors")),
            "-o",
            s(out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kill `child` with SIGKILL once its temporary file holds at least
/// `bytes`; returns the temporary file it was writing.
fn kill_mid_write(child: &mut Child, dir: &Path, bytes: u64) -> PathBuf {
    let start = Instant::now();
    loop {
        if let Some(t) = temps(dir)
            .into_iter()
            .find(|t| std::fs::metadata(t).is_ok_and(|m| m.len() >= bytes))
        {
            // SAFETY: plain kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL),
                "apply finished before it could be killed; make the base bigger"
            );
            return t;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before writing {bytes} bytes"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A small apply to the same target that runs to completion.
fn small_apply(dir: &Dir, out: &Path) {
    let d = Dir::new();
    write_gguf(&d.p("base.gguf"), "llama", &base_tensors());
    good_residual(&d.p("res.safetensors"));
    let o = run(&[
        "apply",
        "-q",
        "--base",
        s(&d.p("base.gguf")),
        "--residual",
        s(&d.p("res.safetensors")),
        "-o",
        s(out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = dir;
}

#[test]
fn sigkill_mid_write_leaves_nothing_and_next_run_cleans_up() {
    let d = Dir::new();
    big_inputs(&d);
    let out = d.p("out.gguf");
    let mut child = spawn_apply(&d, &out);
    let tmp = kill_mid_write(&mut child, d.tmp.path(), 4 << 20);
    assert!(!out.exists(), "a killed run left {}", out.display());
    assert!(
        tmp.exists(),
        "the killed run's temporary file should still be there"
    );
    // A temporary file of another target, from a dead pid: not ours to remove.
    let other = d.p(&format!(".other.gguf.{}.0.qresidual-tmp", child.id()));
    std::fs::write(&other, b"x").unwrap();

    small_apply(&d, &out);
    assert!(
        !tmp.exists(),
        "the next run left the stale {}",
        tmp.display()
    );
    assert!(
        other.exists(),
        "another target's temporary file was removed"
    );
    GgufFile::open(&out).expect("the new output is complete");
}

#[test]
fn sigkill_mid_write_keeps_the_previous_file() {
    let d = Dir::new();
    big_inputs(&d);
    let out = d.p("out.gguf");
    small_apply(&d, &out);
    let previous = std::fs::read(&out).unwrap();
    let mut child = spawn_apply(&d, &out);
    kill_mid_write(&mut child, d.tmp.path(), 4 << 20);
    assert_eq!(std::fs::read(&out).unwrap(), previous);
    GgufFile::open(&out).expect("the previous output is intact");
}

#[test]
fn a_live_runs_temporary_file_is_left_alone() {
    // A running pid: the file may be a concurrent run's.
    let d = Dir::new();
    let out = d.p("out.gguf");
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let live = d.p(&format!(".out.gguf.{}.7.qresidual-tmp", sleeper.id()));
    std::fs::write(&live, b"x").unwrap();
    small_apply(&d, &out);
    assert!(live.exists(), "a live process's temporary file was removed");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}
