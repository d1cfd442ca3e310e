"""A trainer killed with SIGKILL at a random point, then re-run: it resumes to the weights of an
uninterrupted run, bit for bit."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.faults.injectors import leftovers
from tests.faults.test_disk_full import _same_weights, _student_args
from tests.pipelines.synthetic_shapes import make_shapes_dataset
from wsseg_fast.cli import main
from wsseg_fast.io import TMP_PREFIX


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n=8)


def _epochs(args, n) -> list:
    return [*args[: args.index("--epochs") + 1], str(n), *args[args.index("--epochs") + 2 :]]


@pytest.mark.slow
def test_train_student_killed_at_a_random_point_resumes_to_the_same_weights(shapes, tmp_path):
    epochs = 40
    killed = tmp_path / "killed"
    args = _epochs(_student_args(shapes, killed), epochs)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsseg_fast", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "log.jsonl").exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0, 0.3))  # anywhere: mid-epoch or mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert 1 <= reached < epochs, reached  # really midway
    assert main(args) == 0  # re-running resumes
    assert not leftovers(killed)
    clean = tmp_path / "clean"
    assert main(_epochs(_student_args(shapes, clean), epochs)) == 0
    _same_weights(killed / "last.pt", clean / "last.pt")
    assert len((killed / "log.jsonl").read_text().splitlines()) == epochs


def test_a_resumed_trainer_removes_the_temporary_file_of_a_write_killed_midway(shapes, tmp_path):
    out = tmp_path / "run"
    args = _epochs(_student_args(shapes, out), 1)
    assert main(args) == 0
    (out / f"{TMP_PREFIX}last.pt").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    assert main(_epochs(args, 2)) == 0
    assert not leftovers(out) and torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
