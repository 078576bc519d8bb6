"""Model references from the Hugging Face Hub land in the cache exactly as
huggingface_hub lays it out: huggingface_hub's own `scan_cache_dir` and
`hf_hub_download(local_files_only=True)` find what qresidual downloaded, and
the cache huggingface_hub writes from the same (fake, loopback) Hub has the
same files, links and refs.

Run: python3 -m pytest tests/interop/test_hub_cache.py
"""
import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, qresidual_bin
from fake_hub import COMMIT, FakeHub

import huggingface_hub  # noqa: E402
TINY = ROOT / "fixtures" / "tiny"


@pytest.fixture()
def hub(tmp_path):
    root = tmp_path / "hub"
    (root / "tiny/llama-gguf").mkdir(parents=True)
    shutil.copy(TINY / "base-q4_k_m.gguf", root / "tiny/llama-gguf/tiny-Q4_K_M.gguf")
    shutil.copy(TINY / "expected.json", root / "tiny/llama-gguf/README.md")
    shutil.copytree(TINY / "residual-sharded", root / "tiny/residual")
    h = FakeHub(root)
    yield h
    h.close()


def qresidual(args, env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    full.update(env)
    p = subprocess.run([str(qresidual_bin()), *args], capture_output=True, text=True, env=full)
    assert p.returncode == 0, p.stderr
    return p


def listing(repo_dir):
    """Every entry below a cache repository: its path and its link target or size."""
    out = []
    for p in sorted(pathlib.Path(repo_dir).rglob("*")):
        rel = str(p.relative_to(repo_dir))
        if p.is_symlink():
            out.append((rel, os.readlink(p)))
        elif p.is_file():
            out.append((rel, p.stat().st_size))
    return out


def test_cache_layout_is_huggingface_hubs(hub, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(ours)}
    qresidual(["inspect", "tiny/llama-gguf:Q4_K_M"], env)
    qresidual(["inspect", "tiny/residual"], env)

    # huggingface_hub reads our cache.
    info = huggingface_hub.scan_cache_dir(ours)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {"tiny/llama-gguf", "tiny/residual"}
    for r in repos.values():
        assert r.repo_type == "model"
        (rev,) = r.revisions
        assert rev.commit_hash == COMMIT and rev.refs == frozenset({"main"})
    files = {f.file_name for f in next(iter(repos["tiny/residual"].revisions)).files}
    assert files == {"model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    path = huggingface_hub.hf_hub_download("tiny/llama-gguf", "tiny-Q4_K_M.gguf", cache_dir=ours, local_files_only=True)
    assert pathlib.Path(path).read_bytes() == (TINY / "base-q4_k_m.gguf").read_bytes()

    # huggingface_hub, downloading the same files, writes the same entries.
    for repo, names in [("tiny/llama-gguf", ["tiny-Q4_K_M.gguf"]),
                        ("tiny/residual", sorted(files))]:
        for name in names:
            huggingface_hub.hf_hub_download(repo, name, cache_dir=theirs, endpoint=hub.url)
        folder = "models--" + repo.replace("/", "--")
        assert listing(ours / folder) == listing(theirs / folder), folder
