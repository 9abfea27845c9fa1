"""``recsys serve --checkpoint RUN`` starts, answers /ready and /rank on loopback, and stops on SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recsys_serve_starts_answers_ready_and_rank_then_drains_on_sigterm(dlrm_run, tmp_path):
    port, token = _free_port(), tmp_path / "token"
    token.write_text("t0ken\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", "--checkpoint", str(dlrm_run),
                               "--port", str(port), "--token-file", str(token)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base, end, ready = f"http://127.0.0.1:{port}", time.monotonic() + 120, None
        while time.monotonic() < end and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
                    ready = json.loads(response.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert ready == {"status": "ready", "model": "dlrm", "task": "ranking"}, server.stdout.read() if server.poll() is not None else ready
        request = urllib.request.Request(f"{base}/rank", data=json.dumps({"user_id": 3, "candidates": [1, 2]}).encode(),
                                         headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.loads(response.read())["scores"]["click"]) == 2
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (lifespan: the batcher drains), then re-raises the signal it caught.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)


def test_model_threads_leave_the_event_loop_a_core():
    import pytest
    import torch

    from recsys.errors import ConfigError
    from recsys.serve.cli import model_threads

    cores = len(os.sched_getaffinity(0))
    assert model_threads(3) == 3
    assert model_threads(0) == max(1, min(torch.get_num_threads(), cores - 1))
    with pytest.raises(ConfigError, match="--threads"):
        model_threads(-1)


def test_uic_flags_reach_the_engine_and_bad_urls_are_config_errors(dlrm_run, mimn_run):
    import pytest

    from recsys.errors import ConfigError
    from recsys.serve.engine import Engine
    from recsys.serve.uic_ranker import MIMNUICRanker

    engine = Engine.load(mimn_run, uic_url="http://127.0.0.1:1", uic_timeout_s=0.02)
    assert isinstance(engine.scorer, MIMNUICRanker) and engine.scorer.states.client.timeout.read == 0.02
    with pytest.raises(ConfigError, match="--uic-url"):
        Engine.load(mimn_run, uic_url="127.0.0.1:8700")
    with pytest.raises(ConfigError, match="mimn"):
        Engine.load(dlrm_run, uic_url="http://127.0.0.1:1")
