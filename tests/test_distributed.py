"""torchrun: 2 CPU processes over gloo, through the real launcher and the real CLI."""

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
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from bdsel.distributed import shutdown
from bdsel.laplace import LastLayerLaplace


def _batches(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(3):
        n = 5 + 3 * rank  # ranks contribute different batch sizes
        h = torch.randn(n, 6, generator=g, dtype=torch.float64)
        p = torch.softmax(torch.randn(n, 4, generator=g, dtype=torch.float64), 1)
        y = torch.randint(0, 4, (n,), generator=g)
        out.append((h, p, y))
    return out


def _posterior_worker(rank: int, rendezvous: str, out: str) -> None:
    # A file rendezvous: no port to find free and lose to another process before binding it.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    post = LastLayerLaplace(6, 4, dtype=torch.float64, momentum=0.9)
    for h, p, y in _batches(rank):
        post.update(h, p, y, all_reduce=True)
    torch.save(post.state_dict(), f"{out}.{rank}")
    shutdown()  # bdsel's own teardown: the ranks meet, then leave


def test_two_process_posterior_equals_one_process_on_the_union(tmp_path: Path):
    out = str(tmp_path / "posterior")
    mp.spawn(_posterior_worker, args=(str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    single = LastLayerLaplace(6, 4, dtype=torch.float64, momentum=0.9)
    for (h0, p0, y0), (h1, p1, y1) in zip(_batches(0), _batches(1), strict=True):
        single.update(torch.cat([h0, h1]), torch.cat([p0, p1]), torch.cat([y0, y1]))
    for rank in (0, 1):
        state = torch.load(f"{out}.{rank}", weights_only=False)
        torch.testing.assert_close(state["A"], single.A, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state["G"], single.G, rtol=1e-12, atol=1e-12)


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "bdsel_cli.main", *args,
    ]  # fmt: skip


@pytest.fixture
def dist_config(tmp_path: Path, tiny_config_values: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_values))
    return path


def _kill_launcher_and_ranks(launcher: int) -> None:
    """SIGKILL torchrun and its workers. torchrun starts each worker in a session of its own,
    so killing the launcher's process group alone leaves the ranks training."""
    ranks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if ppid == launcher:
            ranks.append(int(stat.parent.name))
    os.killpg(launcher, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")


def test_two_process_training_writes_metrics_once(tmp_path: Path, dist_config: Path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        _torchrun("train", "-c", str(dist_config), "--run-dir", str(run_dir)),
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    # 600 train points: 300 per rank, 4 candidate batches of 64 each, 16 picked per rank
    assert [r["step"] for r in records] == [4, 8]
    assert records[-1]["samples_seen"] == 8 * 16 * 2
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2


def test_two_process_run_killed_and_resumed(tmp_path: Path, dist_config: Path):
    values = yaml.safe_load(dist_config.read_text())
    values["train"] = {"epochs": 12}
    dist_config.write_text(yaml.safe_dump(values))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _torchrun("train", "-c", str(dist_config), "--run-dir", str(run_dir)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    _kill_launcher_and_ranks(proc.pid)  # mid-run
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    first = torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= first < 12

    resumed = subprocess.run(
        _torchrun("train", "--run-dir", str(run_dir), "--resume"),
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 13))
    assert records[-1]["step"] == 12 * 4

    single = [
        sys.executable,
        "-m",
        "bdsel_cli.main",
        "train",
        "--run-dir",
        str(run_dir),
        "--resume",
    ]
    finished = subprocess.run(single, capture_output=True, text=True, timeout=120, env=_env())
    assert finished.returncode == 0 and "nothing to resume" in finished.stdout + finished.stderr
    (run_dir / "summary.json").unlink()  # as if killed between the last checkpoint and summary
    single = subprocess.run(single, capture_output=True, text=True, timeout=120, env=_env())
    assert single.returncode == 2
    assert "resume at the same world size" in " ".join((single.stdout + single.stderr).split())


def test_two_process_cache_equals_one_process_cache(tmp_path: Path, tiny_config_values: dict):
    import h5py

    values = dict(tiny_config_values)
    values["zeroshot"] = {"predictor": "holdout", "epochs": 1}
    cfg = tmp_path / "zs.yaml"
    cfg.write_text(yaml.safe_dump(values))
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    single = subprocess.run(
        [sys.executable, "-m", "bdsel_cli.main", "cache-zeroshot", "-c", str(cfg), "--out", str(one)],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    double = subprocess.run(
        _torchrun("cache-zeroshot", "-c", str(cfg), "--out", str(two)),
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert double.returncode == 0, double.stdout + double.stderr
    with h5py.File(one) as a, h5py.File(two) as b:
        assert bool(b.attrs["complete"])
        for split in ("train", "test"):
            assert b[f"{split}/done"][...].all()
            torch.testing.assert_close(
                torch.from_numpy(b[f"{split}/logprobs"][...]),
                torch.from_numpy(a[f"{split}/logprobs"][...]),
                rtol=1e-5,
                atol=1e-5,
            )
