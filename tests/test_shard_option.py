"""The suite's ``--shard I/N`` option: N interleaved shards are disjoint and together the whole."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "tests/recsys/ops/test_padded_gather.py"


def collected(*options: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", TARGET,
                          *options], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: nothing collected
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_shards_are_disjoint_and_cover_every_test():
    everything = collected()
    shards = [collected("--shard", f"{i}/3") for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(everything)
    assert sum(len(s) for s in shards) == len(everything) >= 3


def test_a_bad_shard_names_the_option():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", TARGET,
                          "--shard", "3/3"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "--shard must be I/N" in out.stdout + out.stderr
