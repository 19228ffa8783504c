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


# the spec file and the tracker are not in the repository: a pointer to them leads a reader nowhere
UNREACHABLE = re.compile("PAPER" + r"\.md|\.\./shared/|\b[Ii]ssues? \d+")  # "issue #N" of a public repo is a URL


def source_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for top in TOP_LEVEL:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in (".md", ".py", ".sh", ".yaml", ".yml")
                  and "runs" not in p.relative_to(ROOT).parts]
    return sorted(files)


def test_nothing_points_to_files_or_trackers_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in source_files()
             for n, line in enumerate(p.read_text().splitlines(), 1) if UNREACHABLE.search(line)]
    assert not found, "point to a file in the repository (docs/method.md, docs/results/...) instead:\n" + "\n".join(found)


def test_every_entry_point_reads_the_recommended_delta():
    """drpo train, drpo compare, TRL's and verl's defaults, the verl recipe and the examples: one delta, DRPO_DELTA."""
    import yaml

    from drpo.config import load_config
    from drpo.lab.methods import parse_method
    from drpo.losses import DRPO_DELTA, get_loss
    from drpo.losses.quadratic import DrpoHyper

    assert DrpoHyper.model_fields["delta"].default == DRPO_DELTA == get_loss("drpo").hyper.delta
    assert load_config(None, []).loss.build().hyper.delta == DRPO_DELTA  # drpo train
    assert parse_method("drpo").build().hyper.delta == DRPO_DELTA  # drpo compare
    for example in ("examples/hf/qwen2.5-math-1.5b.yaml", "examples/smollm2/drpo_arith.yaml"):
        loss = yaml.safe_load((ROOT / example).read_text())["loss"]
        assert loss["name"] == "drpo" and "delta" not in loss, example
    assert '"delta"' not in (ROOT / "examples/trl/train_drpo.py").read_text().split('"""')[1].split("DRPO runs at")[0]
    recipe = yaml.safe_load((ROOT / "examples/verl/drpo_qwen3_4b_base.yaml").read_text())
    assert "clip_ratio" not in recipe["actor_rollout_ref"]["actor"]  # the launch script passes it
    script = (ROOT / "examples/verl/run_drpo_qwen3_4b_base.sh").read_text()
    assert "from drpo.losses import DRPO_DELTA" in script and 'actor_rollout_ref.actor.clip_ratio="$DELTA"' in script
    losses, integrations = ((ROOT / "docs" / name).read_text() for name in ("losses.md", "integrations.md"))
    assert f"**The default is {DRPO_DELTA:g}**" in losses
    assert f"actor_rollout_ref.actor.clip_ratio={DRPO_DELTA:g} " in integrations
    assert f"DRPO's delta is {DRPO_DELTA:g}, `drpo.losses.DRPO_DELTA`" in integrations
    assert f"**DRPO's default is delta {DRPO_DELTA:g}**" in (ROOT / "docs/method.md").read_text()


# every number README.md and docs/ quote from a results directory, rendered from its file (tests/doc_claims.py)
def test_published_tables_match_their_results_files():
    from doc_claims import TABLES

    for document, renderers in TABLES.items():
        text = (ROOT / document).read_text()
        for render in renderers:
            table = render()
            assert table in text, (f"{document} no longer holds this table as its results file gives it (`python "
                                   f"tests/doc_claims.py` prints the current one):\n{table}")


@pytest.mark.parametrize("claim", range(len(__import__("doc_claims").CLAIMS)))
def test_numbers_in_prose_match_their_results_files(claim):
    """Each claim's numbers, rendered from its results file, appear in order in one paragraph of its document;
    the sentence around them may be reworded (the claim's text says what the numbers are)."""
    from doc_claims import CLAIMS, claim_holds, render_claim

    document, text, file, keys, formats = CLAIMS[claim]
    assert claim_holds((ROOT / document).read_text(), file, keys, formats), (
        f"{document} should quote, in one paragraph, from docs/results/{file}: {render_claim(text, file, keys, formats)}")


def test_the_set_up_says_how_to_get_the_cpu_torch_and_why_the_tests_may_mix_verl_and_trl():
    set_up = (ROOT / "README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    # on a fresh machine PyPI's torch==2.13.0 is the CUDA build: the CPU wheel comes from PyTorch's own index
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in set_up
    assert 'pip install -c constraints.txt -e ".[test]"' in set_up and "pip install -c constraints.txt -e ." in set_up
    assert "fresh interpreter where TRL cannot be imported" in set_up
