"""Every repository path the documentation and the examples name exists (a moved file breaks a test, not a reader)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("docs", "examples", "src", "tests", "benchmarks")
# a path from the repository root, as written in prose, code and comments: docs/hf_math.md, src/drpo/
ROOTED = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_LEVEL)})/[\w./-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a markdown link target, relative to the file that holds it


def documents() -> list[Path]:
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("src/drpo/**/README.md")]
    files += [p for p in ROOT.glob("examples/**/*") if p.is_file() and p.suffix in (".md", ".py", ".sh", ".yaml", ".yml")]
    return sorted(files)


def named_paths(document: Path) -> list[tuple[str, Path]]:
    text = document.read_text()
    found = [(match, ROOT / match.rstrip(".,:;")) for match in ROOTED.findall(text)]
    if document.suffix == ".md":
        for target in LINK.findall(text):
            if not re.match(r"[a-z]+:|#", target):  # URLs and in-page anchors are not files
                found.append((target, document.parent / target.split("#")[0]))
    return found


def test_the_documents_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in documents()}
    assert {"README.md", "docs/hf_math.md", "examples/verl/run_drpo_qwen3_4b_base.sh"} <= names


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_named_path_exists(document):
    missing = sorted({name for name, path in named_paths(document) if not path.exists()})
    assert not missing, f"{document.relative_to(ROOT)} names paths that do not exist: {', '.join(missing)}"


def test_the_readme_says_first_which_drpo_this_is():
    """'DRPO' also names Decoupled Reward Policy Optimization (arXiv 2510.04474): a reader must not be misled."""
    opening = "\n".join((ROOT / "README.md").read_text().splitlines()[:12])
    assert "Divergence Regularized Policy Optimization" in opening and "2606.09821" in opening
    assert "Decoupled Reward Policy Optimization" in opening and "2510.04474" in opening


def test_the_set_up_says_how_to_get_the_cpu_torch_and_why_the_tests_may_mix_verl_and_trl():
    set_up = (ROOT / "README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    # on a fresh machine PyPI's torch==2.13.0 is the CUDA build: the CPU wheel comes from PyTorch's own index
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in set_up
    assert 'pip install -c constraints.txt -e ".[test]"' in set_up and "pip install -c constraints.txt -e ." in set_up
    assert "fresh interpreter where TRL cannot be imported" in set_up
