"""qresidual: add full-rank weight residuals to quantized LLM checkpoints
(GGUF, bitsandbytes) and measure the precision lost.

Each function runs the command of the same name in this process, through
the same code as the ``qresidual`` command line, with the GIL released
while it works. Keyword arguments are the command's options with ``_`` for
``-`` (``max_size="+5%"`` is ``--max-size +5%``; ``True`` gives a flag,
a list repeats an option, a dict gives ``KEY=VALUE`` pairs); see
``qresidual <command> --help``::

    import qresidual
    report = qresidual.apply("base-Q4_K_M.gguf", "residual.safetensors",
                             "instruct-Q4_K_M.gguf", strategy="fresh")
    report["summary"]       # the same JSON report as --report writes
    report["outputs"]       # the files written

``progress=True`` shows a tqdm bar per step (when tqdm is installed), a
callable is called as ``progress(step, done, total)``; ``on_message(level,
text)`` receives notes, warnings and the summary table (default: printed
on ``sys.stderr``). Errors raise :class:`QresidualError` (bad data) or
:class:`UsageError` (bad arguments), with the command's message.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from . import _native

__version__ = _native.__version__
__all__ = [
    "apply",
    "extract",
    "compare",
    "inspect",
    "dequantize",
    "quantize",
    "report",
    "run",
    "QresidualError",
    "UsageError",
]


class QresidualError(RuntimeError):
    """A command failed; ``exit_code`` is the command line's (1: bad data)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(QresidualError, ValueError):
    """The arguments do not make a valid command (exit code 2)."""


def _print_message(level: str, text: str) -> None:
    if level == "info":
        sys.stderr.write(text)
    else:
        sys.stderr.write(f"{level}: {text}\n")
    sys.stderr.flush()


class _Tqdm:
    """One tqdm bar per step, opened when the step starts, closed when it ends."""

    def __init__(self):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bar = None
        self._step = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if self._bar is None or step != self._step or done < self._bar.n:
            self.close()
            unit = "B" if step == "writing" else " tensors"
            self._bar = self._tqdm(
                total=total, desc=step, unit=unit, unit_scale=step == "writing", leave=False
            )
            self._step = step
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _observer(progress):
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        try:
            bars = _Tqdm()
        except ImportError:
            return None, lambda: None
        return bars, bars.close
    if callable(progress):
        return progress, lambda: None
    raise UsageError(f"progress must be True, False, None or a callable, not {progress!r}", 2)


def _arg(value: Any) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _argv(command: str, positional: list, options: dict) -> list[str]:
    argv = ["qresidual", command, *(_arg(p) for p in positional)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.rstrip("_").replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, dict):
            for k, v in value.items():
                argv += [flag, f"{k}={_arg(v)}"]
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, _arg(v)]
        else:
            argv += [flag, _arg(value)]
    return argv


def run(
    argv: list[str],
    *,
    progress: Any = None,
    on_message: Optional[Callable[[str, str], None]] = _print_message,
) -> tuple[str, list[Path]]:
    """Run a whole command line (``argv[0]`` is the program's name) in this
    process. Returns what the command prints on stdout and the files it wrote."""
    observer, close = _observer(progress)
    try:
        code, message, stdout, outputs = _native.run(
            [_arg(a) for a in argv], on_message, observer
        )
    finally:
        close()
    if code != 0:
        raise (UsageError if code == 2 else QresidualError)(message, code)
    return stdout, [Path(p) for p in outputs]


def _with_report(command: str, positional: list, options: dict, flag: str, progress, on_message):
    """Run with the JSON report in a temporary file and return it, with
    "outputs" added; a report path the caller gave is written too (an
    .html path as the page `qresidual report` renders from that JSON)."""
    given = options.get(flag)
    with tempfile.TemporaryDirectory(prefix="qresidual-") as tmp:
        path = Path(tmp) / "report.json"
        _, outputs = run(
            _argv(command, positional, {**options, flag: path}),
            progress=progress,
            on_message=on_message,
        )
        report = json.loads(path.read_text()) if path.exists() else {}
        if given and path.exists():
            if Path(given).suffix.lower() in (".html", ".htm"):
                run(["qresidual", "report", path, "-o", given], on_message=None)
            else:
                shutil.copyfile(path, given)
    report["outputs"] = [str(p) for p in outputs]
    return report


def apply(base, residual, output, *, progress=None, on_message=_print_message, **options) -> dict:
    """``qresidual apply --base BASE --residual RESIDUAL -o OUTPUT [options]``.
    Returns the JSON report (as ``--report`` writes it) with "outputs" added."""
    options = {"base": base, "residual": residual, "output": output, **options}
    return _with_report("apply", [], options, "report", progress, on_message)


def quantize(input, output, *, type, progress=None, on_message=_print_message, **options) -> dict:
    """``qresidual quantize INPUT -o OUTPUT --type TYPE [options]``. Returns the
    precision report with "outputs" added."""
    options = {"output": output, "type": type, **options}
    return _with_report("quantize", [input], options, "report", progress, on_message)


def dequantize(input, output, *, progress=None, on_message=_print_message, **options) -> dict:
    """``qresidual dequantize INPUT -o OUTPUT [options]``. Returns {"outputs": [...]}."""
    _, outputs = run(
        _argv("dequantize", [input], {"output": output, **options}),
        progress=progress,
        on_message=on_message,
    )
    return {"outputs": [str(p) for p in outputs]}


def extract(instruct, base, output, *, progress=None, on_message=_print_message, **options) -> dict:
    """``qresidual extract --instruct INSTRUCT --base BASE -o OUTPUT [options]``.
    Returns {"outputs": [...]}."""
    options = {"instruct": instruct, "base": base, "output": output, **options}
    _, outputs = run(_argv("extract", [], options), progress=progress, on_message=on_message)
    return {"outputs": [str(p) for p in outputs]}


def compare(a, b, *, on_message=None, **options) -> dict:
    """``qresidual compare A B --json -``: the comparison as a dict."""
    stdout, _ = run(
        _argv("compare", [a, b], {**options, "json": "-"}), on_message=on_message
    )
    return json.loads(stdout)


def report(report_json, output) -> dict:
    """``qresidual report REPORT.json -o OUTPUT.html``: the report as one
    self-contained HTML page. Returns {"outputs": [...]}."""
    _, outputs = run(_argv("report", [report_json], {"output": output}), on_message=None)
    return {"outputs": [str(p) for p in outputs]}


def inspect(file) -> dict:
    """``qresidual inspect FILE --json``: metadata and tensors as a dict."""
    stdout, _ = run(_argv("inspect", [file], {"json": True}), on_message=None)
    return json.loads(stdout)
