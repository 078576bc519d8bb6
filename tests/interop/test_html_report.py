"""The HTML report in a real browser: headless Chromium renders the page
`apply --report report.html` writes, and the screenshot shows it — not blank,
and the heat map's cells in the colours the page gives them.

Run: python3 -m pytest tests/interop/test_html_report.py  (needs chromium on PATH;
tests/run_all.sh installs Debian's package when it is missing)
"""
import re
import shutil
import subprocess
import tempfile

import pytest
from PIL import Image

from conftest import ROOT, run_qresidual

TINY = ROOT / "fixtures" / "tiny"
WIDTH, HEIGHT = 1200, 1400


def screenshot(page, png):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (tests/run_all.sh installs it: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}",
             "--hide-scrollbars", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"no screenshot (exit {p.returncode}):\n{p.stderr[-2000:]}"
    return Image.open(png).convert("RGB")


def test_browser_renders_the_heat_map(tmp_path):
    page = tmp_path / "report.html"
    run_qresidual("apply", "--base", TINY / "base-q4_k_m.gguf", "--residual", TINY / "residual-f16.safetensors",
                  "-o", tmp_path / "out.gguf", "--report", page, "-q")
    html = page.read_text()
    assert "<script" not in html and "https://" not in html
    # The colours of the retention map's cells, as the page gives them.
    retention = html.split('data-metric="retention"', 1)[1].split("</svg>", 1)[0]
    cells = set(re.findall(r'class="cell"[^>]*fill="#([0-9a-f]{6})"', retention))
    assert len(cells) >= 3, cells
    img = screenshot(page, tmp_path / "shot.png")
    assert img.size == (WIDTH, HEIGHT)

    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, "a blank or nearly blank page"
    white = sum(n for n, c in colours if c == (255, 255, 255))
    assert white < 0.97 * WIDTH * HEIGHT, "the page is blank"

    present = {n_c[1] for n_c in colours}
    shown = {c for c in cells if tuple(int(c[i:i + 2], 16) for i in (0, 2, 4)) in present}
    assert shown == cells, f"heat map colours missing from the screenshot: {sorted(cells - shown)}"
    # Each cell is 18 × 18 px: every colour covers at least one whole cell's inside.
    counts = {c: n for n, c in colours}
    for c in cells:
        rgb = tuple(int(c[i:i + 2], 16) for i in (0, 2, 4))
        assert counts[rgb] >= 16 * 16, (c, counts[rgb])
