"""Sharded runs: torchrun with 2 CPU ranks (gloo) writes the report one process writes, byte for byte."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kddiag.distributed import shard
from kddiag.models import MLP

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("n_samples", [1, 7, 100, 1000, 1001])
@pytest.mark.parametrize("unit", [1, 64, 512])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_are_whole_units_covering_every_example_once(n_samples, unit, world_size):
    shards = [shard(n_samples, unit, rank, world_size) for rank in range(world_size)]
    assert [i for part in shards for i in part] == list(range(n_samples))
    assert all(part.start % unit == 0 for part in shards)
    sizes = [-(-len(part) // unit) for part in shards]  # units per shard
    assert max(sizes) - min(sizes) <= 1


def _run(args, out, *, ranks=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    prefix = [sys.executable, "-m", "kddiag"]
    if ranks:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        prefix = [torchrun, "--standalone", "--nproc-per-node", str(ranks), "-m", "kddiag"]
    done = subprocess.run([*prefix, *args, "--out", str(out), "--batch-size", "64"], env=env,
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A logits-mode pair (float16 teacher) and a module pair with features, on eval and transfer sets."""
    folder = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    n_eval, n_train = 9000, 10000  # more than one CHUNK_ROWS shard unit each: both ranks get examples
    x = rng.normal(size=(n_eval + n_train, 12)).astype(np.float32)
    y = (x[:, :5].argmax(axis=1) + (rng.random(len(x)) < 0.1)) % 5
    np.savez(folder / "eval.npz", x=x[:n_eval], y=y[:n_eval])
    np.savez(folder / "train.npz", x=x[n_eval:], y=y[n_eval:])
    torch.manual_seed(0)
    for name, widths in (("teacher", (12, 32, 5)), ("student", (12, 8, 5))):
        torch.save(MLP(widths).state_dict(), folder / f"{name}.pt")
    base = rng.normal(size=(n_eval, 5)) * 3
    np.save(folder / "t.npy", (base + rng.normal(size=base.shape)).astype(np.float16))
    np.save(folder / "s.npy", base + 2 * rng.normal(size=base.shape))
    return folder


@pytest.mark.parametrize("mode", ["logits", "modules", "compare"])
def test_two_ranks_write_the_report_one_process_writes(inputs, tmp_path, mode):
    if mode == "logits":
        args = ["inspect", str(inputs / "t.npy"), str(inputs / "s.npy"), "--data", str(inputs / "eval.npz")]
    elif mode == "compare":  # two students of one teacher; the teacher as its own second student
        args = ["compare", str(inputs / "t.npy"), str(inputs / "s.npy"), str(inputs / "t.npy"),
                "--data", str(inputs / "eval.npz")]
    else:
        args = ["inspect", str(inputs / "teacher.pt"), str(inputs / "student.pt"), "--teacher-arch", "mlp:12-32-5",
                "--student-arch", "mlp:12-8-5", "--data", str(inputs / "eval.npz"),
                "--transfer-data", str(inputs / "train.npz")]
    single = _run(args, tmp_path / "one")
    sharded = _run(args, tmp_path / "two", ranks=2)
    assert (tmp_path / "one" / "report.json").read_bytes() == (tmp_path / "two" / "report.json").read_bytes()
    assert sharded.stdout.replace(str(tmp_path / "two"), "OUT") == single.stdout.replace(str(tmp_path / "one"), "OUT")


@pytest.mark.parametrize("env, said", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be an integer from 0; got 'abc'"),
    ({"WORLD_SIZE": "2"}, "RANK is not set, but WORLD_SIZE is"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK must be an integer from 0 to 1; got '5'"),  # torch would wait 30 minutes for ranks that never come
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK must be an integer from 0; got '-1'"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "abc"},
     "could not join the other ranks"),
])
def test_a_broken_torchrun_environment_gets_one_line(monkeypatch, env, said):
    from click.testing import CliRunner

    from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and said in lines[0], result.stderr
    assert "Traceback" not in result.output and lines[0].startswith("kddiag: error: ")
