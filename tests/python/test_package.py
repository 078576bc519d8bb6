"""The Python package (`pip install` of the wheel maturin builds from python/):
every function gives what the `qresidual` command gives, byte for byte.

Run by tests/run_all.sh in a fresh virtual environment holding only the
wheel, pytest and tqdm; QRESIDUAL_BIN is the command built from the same tree.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest

import qresidual

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny"
BASE = TINY / "base-q4_k_m.gguf"
RESIDUAL = TINY / "residual-f16.safetensors"


def cli(*args):
    exe = os.environ.get("QRESIDUAL_BIN", str(ROOT / "target" / "release" / "qresidual"))
    p = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


def same_bytes(a, b):
    assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes(), f"{a} != {b}"


@pytest.mark.parametrize("strategy", ["fresh", "auto", "search"])
def test_apply_equals_the_command(tmp_path, strategy):
    out = tmp_path / "py.gguf"
    report = qresidual.apply(BASE, RESIDUAL, out, strategy=strategy, quiet=True)
    cli("apply", "--base", BASE, "--residual", RESIDUAL, "-o", tmp_path / "cli.gguf",
        "--strategy", strategy, "--report", tmp_path / "cli.json", "--quiet")
    same_bytes(out, tmp_path / "cli.gguf")
    assert report["outputs"] == [str(out)]
    expected = json.loads((tmp_path / "cli.json").read_text())
    assert {k: v for k, v in report.items() if k != "outputs"} == expected
    assert report["tensors"], report.keys()


def test_apply_keeps_a_report_path_the_caller_gave(tmp_path):
    report = qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", type="q8_0",
                             report=tmp_path / "r.json", quiet=True)
    assert json.loads((tmp_path / "r.json").read_text()) == {
        k: v for k, v in report.items() if k != "outputs"}


def test_an_html_report_path_gets_the_page(tmp_path):
    report = qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", strategy="fresh",
                             report=tmp_path / "r.html", quiet=True)
    cli("apply", "--base", BASE, "--residual", RESIDUAL, "-o", tmp_path / "c.gguf",
        "--strategy", "fresh", "--report", tmp_path / "c.html", "--quiet")
    same_bytes(tmp_path / "r.html", tmp_path / "c.html")
    assert report["tensors"]
    (tmp_path / "r.json").write_text(json.dumps({k: v for k, v in report.items() if k != "outputs"}))
    done = qresidual.report(tmp_path / "r.json", tmp_path / "again.html")
    assert done["outputs"] == [str(tmp_path / "again.html")]
    cli("report", tmp_path / "r.json", "-o", tmp_path / "cli-again.html")
    same_bytes(tmp_path / "again.html", tmp_path / "cli-again.html")


def test_extract_quantize_dequantize_equal_the_command(tmp_path):
    pair = ROOT / "fixtures" / "pair"
    done = qresidual.extract(pair / "hf-instruct", pair / "hf-base", tmp_path / "py.safetensors",
                             quiet=True)
    assert done["outputs"] == [str(tmp_path / "py.safetensors")]
    cli("extract", "--instruct", pair / "hf-instruct", "--base", pair / "hf-base",
        "-o", tmp_path / "cli.safetensors", "--quiet")
    same_bytes(tmp_path / "py.safetensors", tmp_path / "cli.safetensors")

    qresidual.dequantize(BASE, tmp_path / "py-f32.gguf", quiet=True)
    cli("dequantize", BASE, "-o", tmp_path / "cli-f32.gguf", "--quiet")
    same_bytes(tmp_path / "py-f32.gguf", tmp_path / "cli-f32.gguf")

    report = qresidual.quantize(tmp_path / "py-f32.gguf", tmp_path / "py-q.gguf", type="q4_k_m",
                                quiet=True)
    cli("quantize", tmp_path / "cli-f32.gguf", "-o", tmp_path / "cli-q.gguf", "--type", "q4_k_m",
        "--quiet")
    same_bytes(tmp_path / "py-q.gguf", tmp_path / "cli-q.gguf")
    assert report["outputs"] == [str(tmp_path / "py-q.gguf")]


def test_inspect_and_compare_return_the_commands_json(tmp_path):
    assert qresidual.inspect(BASE) == json.loads(cli("inspect", BASE, "--json").stdout)
    got = qresidual.compare(BASE, BASE)
    assert got == json.loads(cli("compare", BASE, BASE, "--json", "-").stdout)
    assert got["tensors"], got.keys()


def test_messages_and_progress_reach_the_callbacks(tmp_path):
    messages, steps = [], []
    qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", strategy="fresh",
                    on_message=lambda level, text: messages.append((level, text)),
                    progress=lambda step, done, total: steps.append((step, done, total)))
    assert any(level == "info" and text.startswith("wrote ") for level, text in messages), messages
    writing = [s for s in steps if s[0] == "writing"]
    assert writing, steps
    assert [d for _, d, _ in writing] == sorted(d for _, d, _ in writing)
    assert writing[-1][1] == writing[-1][2] > 0
    assert writing[-1][2] <= (tmp_path / "o.gguf").stat().st_size


def test_quiet_silences_messages(tmp_path):
    messages = []
    qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", strategy="fresh", quiet=True,
                    on_message=lambda level, text: messages.append(text))
    assert messages == []


def test_a_callback_exception_is_raised_after_the_work(tmp_path):
    def boom(step, done, total):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", strategy="fresh", progress=boom)


def test_errors_name_the_file_and_leave_nothing(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(qresidual.QresidualError) as e:
        qresidual.apply(missing, RESIDUAL, tmp_path / "o.gguf")
    assert "nope.gguf" in str(e.value) and e.value.exit_code != 0
    assert not (tmp_path / "o.gguf").exists()
    with pytest.raises(qresidual.UsageError) as e:
        qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", strategy="sideways")
    assert "sideways" in str(e.value) and e.value.exit_code == 2
    with pytest.raises(qresidual.UsageError):
        qresidual.apply(BASE, RESIDUAL, tmp_path / "o.gguf", no_such_option=1)
    assert list(tmp_path.iterdir()) == []


def test_the_gil_is_released_during_work(tmp_path):
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    # The native call alone (no Python of the wrapper around it), repeated
    # until the calls add up to a measurable time.
    windows = []
    t = threading.Thread(target=ticker)
    t.start()
    try:
        while sum(b - a for a, b in windows) < 0.3:
            out = tmp_path / f"o{len(windows)}.gguf"
            argv = ["qresidual", "apply", "--base", str(BASE), "--residual", str(RESIDUAL),
                    "-o", str(out), "--strategy", "search", "--quiet"]
            a = time.perf_counter()
            code, message, _, _ = qresidual._native.run(argv, None, None)
            b = time.perf_counter()
            assert code == 0, message
            windows.append((a, b))
    finally:
        stop.set()
        t.join()
    inside = sum(1 for x in ticks for a, b in windows if a < x < b)
    # Holding the GIL through a call would leave the ticker at most the odd
    # tick per call (a switch between the time stamp and the call); released,
    # it ticks about once a millisecond all through.
    assert inside >= 3 * len(windows), (inside, len(windows), sum(b - a for a, b in windows))


def test_the_command_is_installed(tmp_path):
    exe = shutil.which("qresidual", path=os.path.dirname(sys.executable))
    assert exe, "the wheel installs the qresidual command beside the interpreter"
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("qresidual "), p
    p = subprocess.run([exe, "apply", "--base", BASE, "--residual", RESIDUAL, "-o",
                        tmp_path / "o.gguf", "--strategy", "fresh", "--quiet"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    cli("apply", "--base", BASE, "--residual", RESIDUAL, "-o", tmp_path / "c.gguf",
        "--strategy", "fresh", "--quiet")
    same_bytes(tmp_path / "o.gguf", tmp_path / "c.gguf")
    p = subprocess.run([exe, "apply", "--base", tmp_path / "missing.gguf", "--residual", RESIDUAL,
                        "-o", tmp_path / "x.gguf"], capture_output=True, text=True)
    assert p.returncode == 1 and "missing.gguf" in p.stderr


def test_help_is_returned_not_raised():
    out, files = qresidual.run(["qresidual", "apply", "--help"])
    assert "--strategy" in out and files == []
