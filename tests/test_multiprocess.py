"""Real multi-process JAX on localhost: two processes (one CPU device each, gloo collectives,
`jax.distributed` on a free port) run a data-parallel cascade step and data-parallel train
steps over their global 2-device mesh; both equal a single-device run
(tests/_multiprocess_worker.py does the work; this file starts it and checks the results)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from elang_jax.testing import tolerances

WORKER = Path(__file__).with_name("_multiprocess_worker.py")
TIMEOUT_S = 180  # a loaded 2-core machine; a normal run takes ~15 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    env = dict(os.environ)
    # One device per process: the forced 8 of this session must not reach the children.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), "2", str(port), str(outs[i])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the two processes did not finish in {TIMEOUT_S} s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    atol, _ = tolerances()
    for path in outs:
        report = json.loads(path.read_text())
        assert report["devices"] == 2
        cascade = report["cascade"]
        assert cascade["predictions_equal"] and cascade["tier_equal"], cascade
        assert cascade["logits_max_diff"] <= atol, cascade
        # The median threshold escalates rows; each process's shard reports its own bucket.
        assert cascade["escalated"] > 0 and len(cascade["buckets_used"]) == 2
        train = report["train"]
        assert train["params_max_diff"] <= atol, train
        assert (
            max(abs(a - b) for a, b in zip(train["losses"], train["ref_losses"], strict=True))
            <= atol
        )
