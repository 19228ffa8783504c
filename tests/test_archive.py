"""A sweep's runs archive (drpo.lab.archive): every finished run's files byte for byte, bytes that
depend only on the runs, runs a shared sweep holds stored once, and the reader's order of places."""

from __future__ import annotations

import json
import tarfile

from drpo.lab.archive import RunArchive, pack, read_archive


def make_run(sweep, condition, method, seed, final=0.5, interrupted=False):
    path = sweep / "runs" / condition / method / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"seed: {seed}\nloss:\n  name: {method}\n")
    (path / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.3}) + "\n"
                                        + json.dumps({"step": 1, "eval/accuracy": final, "lr": 1e-4}) + "\n")
    (path / "summary.json").write_text(json.dumps({"interrupted": interrupted}))
    (path / "worker.log").write_text("not a run file\n")
    return path


def test_pack_keeps_each_finished_runs_files_byte_for_byte_and_nothing_else(tmp_path):
    done = make_run(tmp_path, "fp8", "drpo", 0)
    make_run(tmp_path, "fp8", "drpo", 1, interrupted=True)  # resumable: stays on disk only
    assert pack(tmp_path)
    archived = read_archive(tmp_path / "runs.tar.xz")
    assert sorted(archived) == [f"runs/fp8/drpo/seed0/{name}" for name in ("config.yaml", "metrics.jsonl", "summary.json")]
    assert all(archived[f"runs/fp8/drpo/seed0/{p.name}"] == p.read_bytes() for p in done.iterdir() if p.suffix != ".log")
    with tarfile.open(tmp_path / "runs.tar.xz") as tar:  # no times or owners: the bytes depend on the runs only
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "", 0o644)}


def test_packing_the_same_runs_again_rewrites_nothing_and_a_changed_run_replaces_its_copy(tmp_path):
    run = make_run(tmp_path, "fp8", "drpo", 0)
    pack(tmp_path)
    first = (tmp_path / "runs.tar.xz").read_bytes()
    assert not pack(tmp_path) and (tmp_path / "runs.tar.xz").read_bytes() == first
    (tmp_path / "other").mkdir()
    make_run(tmp_path / "other", "fp8", "drpo", 0)  # the same runs in another directory: the same bytes
    pack(tmp_path / "other")
    assert (tmp_path / "other" / "runs.tar.xz").read_bytes() == first
    (run / "summary.json").write_text(json.dumps({"interrupted": False, "steps": 2}))
    assert pack(tmp_path)
    assert read_archive(tmp_path / "runs.tar.xz")["runs/fp8/drpo/seed0/summary.json"] == (run / "summary.json").read_bytes()


def test_runs_a_shared_sweep_holds_are_stored_once_and_read_from_there(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    make_run(first, "fp8", "drpo", 0)
    pack(first)
    make_run(second, "fp8", "drpo", 0)  # identical to first's
    make_run(second, "fp8", "pg_is", 0, final=0.1)  # second's own
    (second / "shared_runs.txt").write_text("../first\n")
    pack(second)
    assert sorted({name.rsplit("/", 1)[0] for name in read_archive(second / "runs.tar.xz")}) == ["runs/fp8/pg_is/seed0"]
    expected = (second / "runs" / "fp8" / "drpo" / "seed0" / "metrics.jsonl").read_text()
    for name in ("first", "second"):
        (tmp_path / name / "runs").rename(tmp_path / name / "made-here")  # a checkout holds only the archives
    archive = RunArchive(second)
    assert archive.files(second / "runs" / "fp8" / "drpo" / "seed0")["metrics.jsonl"] == expected
    assert json.loads(archive.files(second / "runs" / "fp8" / "pg_is" / "seed0")["metrics.jsonl"].splitlines()[1]) == {
        "step": 1, "eval/accuracy": 0.1, "lr": 1e-4}
    assert archive.files(second / "runs" / "fp8" / "drpo" / "seed7") == {}


def test_a_run_directory_on_disk_is_read_before_the_archive(tmp_path):
    """An archived run being resumed or extended here: its directory holds the newer files."""
    run = make_run(tmp_path, "fp8", "drpo", 0)
    pack(tmp_path)
    (run / "summary.json").write_text(json.dumps({"interrupted": True}))
    (run / "metrics.jsonl").unlink()
    files = RunArchive(tmp_path).files(run)
    assert json.loads(files["summary.json"]) == {"interrupted": True} and "metrics.jsonl" not in files
