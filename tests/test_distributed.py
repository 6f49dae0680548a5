"""torchrun on CPU (gloo, 2 processes): DDP training equals one process with the same global batch, ranks
stay in sync, a killed worker is restarted and the job ends where an uninterrupted one does, and a stop on one
rank stops them all. Each launch has its own timeout, so nothing here can hang."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
WORKER = HERE / "ddp_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
TIMEOUT = 240

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")


def torchrun(nproc: int, *args: str, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={max_restarts}", *args]


def launch(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def worker(out: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = torchrun(nproc, str(WORKER), str(out), *args) if nproc > 1 else [sys.executable, str(WORKER), str(out),
                                                                            *args]
    return launch(cmd)


def processes() -> list[tuple[int, int, str]]:
    """``(pid, parent pid, NUL-joined command line)`` of every process, from /proc (no procps needed)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                out.append((int(d.name), parent, (d / "cmdline").read_text()))
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_two_processes_equal_one_with_the_same_global_batch_and_stay_in_sync(tmp_path):
    two = worker(tmp_path / "two", 2, "--batch", "8")  # global batch 2 x 8
    assert two.returncode == 0, two.stdout + two.stderr
    one = worker(tmp_path / "one", 1, "--batch", "16")
    assert one.returncode == 0, one.stdout + one.stderr
    acc = worker(tmp_path / "acc", 1, "--batch", "8", "--accumulate", "2")  # 2 micro-batches of 8
    assert acc.returncode == 0, acc.stdout + acc.stderr
    r0, r1 = weights(tmp_path / "two" / "rank0.safetensors"), weights(tmp_path / "two" / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # (and checked after every step by the worker)
    for other in (one, acc):
        w = weights(tmp_path / ("one" if other is one else "acc") / "rank0.safetensors")
        worst = max((w[k].double() - r0[k].double()).abs().max().item() for k in r0)
        assert worst < 1e-5, worst
    log = [json.loads(line) for line in (tmp_path / "two" / "run" / "log.jsonl").read_text().splitlines()]
    log1 = [json.loads(line) for line in (tmp_path / "one" / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(log, log1, strict=True))
    assert "global batch 16 = 8 per process x 2" in two.stdout


def test_progressive_distillation_under_ddp_equals_one_process(tmp_path):
    """The student's x0 prediction goes through DDP's forward, so its gradients are all-reduced."""
    import dataclasses

    from diffguide.checkpoint import save_weights
    from diffguide.models import build_model
    from diffguide.nets import GuidedStudent

    torch.manual_seed(0)
    student = GuidedStudent.from_teacher(build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3,
                                                     overrides={"dropout": 0.0}), (0.0, 4.0))
    torch.nn.init.normal_(student.w_emb.mlp[-1].weight, std=0.05)
    teacher = save_weights(tmp_path / "stage_one.safetensors", student,
                           {"kind": "student", "model": dataclasses.asdict(student.config), "train": {}})
    two = worker(tmp_path / "two", 2, "--batch", "8", "--steps", "4", "--teacher", str(teacher))
    assert two.returncode == 0, two.stdout + two.stderr
    one = worker(tmp_path / "one", 1, "--batch", "16", "--steps", "4", "--teacher", str(teacher))
    assert one.returncode == 0, one.stdout + one.stderr
    r0, w = weights(tmp_path / "two" / "rank0.safetensors"), weights(tmp_path / "one" / "rank0.safetensors")
    assert max((w[k].double() - r0[k].double()).abs().max().item() for k in r0) < 1e-5
    moved = weights(tmp_path / "one" / "rank0.safetensors")
    assert any(not torch.equal(moved[k], student.state_dict()[k]) for k in moved)  # it trained


def test_a_killed_worker_is_restarted_and_the_job_ends_as_an_uninterrupted_one(tmp_path):
    ref = worker(tmp_path / "ref", 2, "--steps", "10", "--ckpt-every", "3")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    out = tmp_path / "cut"
    job = subprocess.Popen(torchrun(2, str(WORKER), str(out), "--steps", "10", "--ckpt-every", "3", "--slow", "0.5",
                                    max_restarts=1), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    try:
        log, t0 = out / "run" / "log.jsonl", time.time()
        while not (log.exists() and len(log.read_text().splitlines()) >= 5):  # past the checkpoint at step 3
            assert job.poll() is None and time.time() - t0 < TIMEOUT, "the job ended before it could be cut"
            time.sleep(0.2)
        workers = [pid for pid, parent, cmd in processes() if parent == job.pid and "ddp_worker.py" in cmd]
        assert len(workers) == 2, workers
        victim = workers[-1]  # one of the launcher's two workers
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=TIMEOUT)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for pid, _, cmd in processes():  # workers torchrun left behind
            if f"ddp_worker.py\0{out}" in cmd:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    assert job.returncode == 0, output
    assert "restart 1: resuming" in output and "resumed from" in output, output
    a, b = weights(tmp_path / "ref" / "rank0.safetensors"), weights(out / "rank0.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_on_one_rank_stops_every_rank_and_nothing_hangs(tmp_path):
    t0 = time.time()
    res = worker(tmp_path, 2, "--steps", "20", "--nan-at", "2")
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "TrainingDiverged" in text and "at step 2" in text, text
    assert "(rank 1)" in text and "not finite on another rank (rank 0)" in text, text
    assert time.time() - t0 < TIMEOUT


def test_a_time_budget_stops_both_ranks_at_the_same_step(tmp_path):
    res = worker(tmp_path, 2, "--time-budget", "10", "--slow", "0.2")
    assert res.returncode == 0, res.stdout + res.stderr
    r0, r1 = weights(tmp_path / "rank0.safetensors"), weights(tmp_path / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)


def test_bad_distributed_input_is_refused_before_any_step(tmp_path):
    import numpy as np

    from diffguide.images import to_uint8
    from test_training import tiny_data

    data = tiny_data(n=20, size=8)
    np.savez(tmp_path / "d.npz", images=to_uint8(data.images)[..., 0], labels=data.labels.numpy())
    base = ["-m", "diffguide", "train", "--data", "d.npz", "--preset", "tiny", "--steps", "2", "--no-progress",
            "--device", "cpu"]
    res = launch(torchrun(2, *base, "--batch-size", "16", "--out", "big"), cwd=tmp_path)
    assert res.returncode != 0 and "global batch of 32 rows (batch_size 16 x 2 processes x accumulate 1) exceeds " \
        "the 20 images" in res.stdout + res.stderr, res.stdout + res.stderr
    res = launch(torchrun(2, *base, "--batch-size", "4", "--backend", "nccl", "--out", "nccl"), cwd=tmp_path)
    assert res.returncode != 0 and "backend nccl needs CUDA devices" in res.stdout + res.stderr
    res = launch([sys.executable, *base, "--batch-size", "8", "--out", "run"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = launch(torchrun(2, *base, "--batch-size", "8", "--steps", "4", "--resume", "--out", "run"), cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and "global batch is 8 rows per step, but batch_size 8 x 2 processes" in text, text
    assert not (tmp_path / "big").exists() and not (tmp_path / "nccl").exists()  # refused before anything is written
    res = launch(torchrun(2, *base, "--batch-size", "4", "--steps", "4", "--resume", "--out", "run"), cwd=tmp_path)
    assert res.returncode == 0 and "resumed from" in res.stdout, res.stdout + res.stderr  # 4 x 2 = 8: it goes on


def test_sharded_sample_and_sweep_equal_one_process(tmp_path):
    import numpy as np

    common = ["--checkpoint", "mnist", "--sampler", "ddim", "--steps", "3"]
    for nproc, out in ((1, "one"), (2, "two")):
        head = torchrun(2, "-m", "diffguide") if nproc == 2 else [sys.executable, "-m", "diffguide"]
        res = launch([*head, "sample", *common, "--w", "0,2", "--num-samples", "10", "--out", f"{out}/s"], cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        res = launch([*head, "sweep", *common, "--w", "0,1", "--num-samples", "12", "--batch-size", "4", "--no-plot",
                      "--no-progress", "--out", f"{out}/sweep"], cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
    for tag in ("w0", "w2"):
        with np.load(tmp_path / "one/s" / f"{tag}.npz") as a, np.load(tmp_path / "two/s" / f"{tag}.npz") as b:
            assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    for tag in ("w0", "w1"):
        with np.load(tmp_path / "one/sweep/samples" / f"{tag}.npz") as a, \
                np.load(tmp_path / "two/sweep/samples" / f"{tag}.npz") as b:
            assert np.array_equal(a["images"], b["images"])
    keys = ("fid", "kid", "precision", "recall", "accuracy", "is_mean")
    rows = {out: {r["tag"]: r for r in json.loads((tmp_path / out / "sweep/results.json").read_text())}
            for out in ("one", "two")}
    for tag in ("w0", "w1"):
        assert all(rows["one"][tag][k] == rows["two"][tag][k] for k in keys), (rows["one"][tag], rows["two"][tag])
