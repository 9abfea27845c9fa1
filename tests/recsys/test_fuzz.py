"""Fuzz: every reader and the config loader, fed seeded mutations of valid inputs, return a result
or raise one of our error types (`recsys.errors.RecsysError`), never another exception.

Deterministic (a fixed seed per case) and bounded: the whole file runs in well under a minute on
one core. A failing case prints its seed and input, so it can be replayed and turned into a test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from recsys.config import load_config
from recsys.data.describe import describe_log, format_description
from recsys.data.log_io import write_log
from recsys.data.readers import ColumnMapping, read_amazon_ratings, read_amazon_s3rec, read_event_table, read_movielens
from recsys.data.log_io import read_log
from recsys.data.schema import EventLog
from recsys.errors import RecsysError
from recsys.train.config import TrainConfig

CASES = 250  # per reader and config

# Values that broke readers before or sit on a boundary: huge and negative ints, floats that are
# not integers, non-finite numbers, non-ASCII digits, control characters, empty fields.
NASTY = [
    "18446744073709551616", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
    "4294967296", "-1", "0", "1e309", "-1e309", "nan", "inf", "1.5", "1e3", "0x10", "", " ", "abc",
    "\u0661\u0662", "\x00", "\t", "::", ",", "|", "\"", "'", "{", "[]", "null", "true", "2020-13-45T99:99:99Z",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "\u00e9", "\ud7ff",
]
BYTES = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\x00", b"\r", b"\n", b"\n\n"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of ``data``: replace a token, insert bytes, cut, repeat a line."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        if kind == 0 and data:  # replace a token (a run of digits or letters) by a nasty value
            tokens = [i for i in range(len(data)) if chr(data[i]).isalnum() and (i == 0 or not chr(data[i - 1]).isalnum())]
            if tokens:
                start = rng.choice(tokens)
                end = start
                while end < len(data) and chr(data[end]).isalnum():
                    end += 1
                data = data[:start] + rng.choice(NASTY).encode("utf-8", "surrogatepass") + data[end:]
        elif kind == 1:  # insert raw bytes (invalid UTF-8 among them)
            at = rng.randint(0, len(data))
            data = data[:at] + rng.choice(BYTES) + data[at:]
        elif kind == 2 and data:  # truncate
            data = data[: rng.randint(0, len(data))]
        elif kind == 3:  # repeat a line
            lines = data.split(b"\n")
            line = rng.choice(lines)
            lines.insert(rng.randint(0, len(lines)), line)
            data = b"\n".join(lines)
        elif kind == 4 and data:  # flip a byte
            at = rng.randrange(len(data))
            data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
        elif kind == 5 and data:  # delete a span
            at = rng.randrange(len(data))
            data = data[:at] + data[at + rng.randint(1, 8):]
    return data


def survives(call, what: str, seed: int, data: bytes):
    """``call()``'s result, or None when it raised a RecsysError; any other exception fails the test."""
    try:
        result = call()
    except RecsysError:
        return None
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{what} (seed {seed}) raised {type(error).__name__}: {error}\ninput: {data[:400]!r}")
    if isinstance(result, EventLog):  # what `recsys data inspect` does next
        try:
            format_description(describe_log(result))
        except RecsysError:
            pass
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"describing the log of {what} (seed {seed}) raised {type(error).__name__}: {error}\n"
                        f"input: {data[:400]!r}")
    return result


# ------------------------------------------------------------------ readers of text files
EVENT_CSV = b"uid,iid,ts,acts,page,shown,stars,req\n7,101,1700000060,click|save,home,true,4,1\n" \
            b"7,205,1700000000,,search,1,3.5,1\n3,101,1600000000, click ,home,false,1,2\n"
EVENT_MAPPING = ColumnMapping(user="uid", item="iid", timestamp="ts", actions="acts", surface="page",
                              impression="shown", rating="stars", request="req")
RATINGS_CSV = b"A1,0001,5.0,10\nA1,0002,4.0,20\nA1,B003,1.0,30\nA2,0001,3.0,15\nA2,0002,2.0,25\nA3,B003,5.0,5\n"
S3REC_TXT = b"7 30 10 30\n3 10\n5 10 30 44\n"
S3REC_JSON = json.dumps({"10": [5, 2], "99": [1], "30": [2]}).encode()
ML100K = b"5\t10\t4\t100\n5\t20\t1\t100\n2\t30\t3\t50\n5\t30\t5\t90\n"
ML1M = b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::2::978298413\n"
ML1M_MOVIES = b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Musical\n"
MLCSV = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n2,1,1.5,964982224\n"
MLCSV_MOVIES = b'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Heat, The (1995)",Action\n'


def _event_table(tmp: Path, data: bytes):
    (tmp / "e.csv").write_bytes(data)
    return read_event_table(tmp / "e.csv", EVENT_MAPPING)


def _event_table_ms(tmp: Path, data: bytes):
    (tmp / "e.csv").write_bytes(data)
    return read_event_table(tmp / "e.csv", ColumnMapping(user="uid", item="iid", timestamp="ts", actions="acts"),
                            timestamp_unit="ms")


def _amazon_ratings(tmp: Path, data: bytes):
    (tmp / "ratings_T.csv").write_bytes(data)
    return read_amazon_ratings(tmp / "ratings_T.csv", min_user_interactions=1, min_item_interactions=1)


def _s3rec_txt(tmp: Path, data: bytes):
    (tmp / "T.txt").write_bytes(data)
    (tmp / "T_item2attributes.json").write_bytes(S3REC_JSON)
    return read_amazon_s3rec(tmp / "T.txt", content_dim=4)


def _s3rec_json(tmp: Path, data: bytes):
    (tmp / "T.txt").write_bytes(S3REC_TXT)
    (tmp / "T_item2attributes.json").write_bytes(data)
    return read_amazon_s3rec(tmp / "T.txt", content_dim=4)


def _movielens(files: dict[str, bytes], mutated: str):
    def read(tmp: Path, data: bytes):
        folder = tmp / "ml"
        folder.mkdir(exist_ok=True)
        for name, text in files.items():
            (folder / name).write_bytes(data if name == mutated else text)
        return read_movielens(folder, content_dim=4)
    return read


READERS = {
    "event_table": (_event_table, EVENT_CSV),
    "event_table_ms": (_event_table_ms, EVENT_CSV),
    "amazon_ratings": (_amazon_ratings, RATINGS_CSV),
    "s3rec_txt": (_s3rec_txt, S3REC_TXT),
    "s3rec_json": (_s3rec_json, S3REC_JSON),
    "ml100k": (_movielens({"u.data": ML100K}, "u.data"), ML100K),
    "ml1m": (_movielens({"ratings.dat": ML1M, "movies.dat": ML1M_MOVIES}, "ratings.dat"), ML1M),
    "ml1m_movies": (_movielens({"ratings.dat": ML1M, "movies.dat": ML1M_MOVIES}, "movies.dat"), ML1M_MOVIES),
    "mlcsv": (_movielens({"ratings.csv": MLCSV, "movies.csv": MLCSV_MOVIES}, "ratings.csv"), MLCSV),
    "mlcsv_movies": (_movielens({"ratings.csv": MLCSV, "movies.csv": MLCSV_MOVIES}, "movies.csv"), MLCSV_MOVIES),
}


@pytest.mark.parametrize("name", list(READERS))
def test_readers_raise_only_our_errors(name, tmp_path):
    read, valid = READERS[name]
    assert survives(lambda: read(tmp_path, valid), name, -1, valid) is not None  # the seed input reads
    for seed in range(CASES):
        data = mutate(valid, random.Random(f"{name}-{seed}"))
        survives(lambda: read(tmp_path, data), name, seed, data)


# ------------------------------------------------------------------ log directories
@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    log = EventLog.from_arrays(user_id=[0, 0, 1], item_id=[2, 1, 0], timestamp=[5, 9, 1], actions=[1, 0, 3],
                               num_items=3)
    return write_log(log, tmp_path_factory.mktemp("log") / "log")


@pytest.mark.parametrize("file", ["meta.json", "events.parquet"])
def test_log_reader_raises_only_our_errors(file, log_dir, tmp_path):
    import shutil

    valid = (log_dir / file).read_bytes()
    for seed in range(CASES):
        rng = random.Random(f"log-{file}-{seed}")
        data = mutate(valid, rng)
        if file == "meta.json" and rng.random() < 0.5:  # valid JSON with a value of the wrong kind
            meta = json.loads(valid)
            key = rng.choice(sorted(meta))
            meta[key] = rng.choice([None, -1, 2**64, "x", [], {}, [1, "a"], {"a": "b"}, 1.5, True])
            data = json.dumps(meta).encode()
        target = tmp_path / f"log-{seed}"
        shutil.copytree(log_dir, target)
        (target / file).write_bytes(data)
        survives(lambda: read_log(target), f"read_log with a damaged {file}", seed, data)


# ------------------------------------------------------------------ the config loader
CONFIGS = ["configs/dlrm/synthetic.yaml", "configs/hstu/beauty.yaml", "configs/transact/transact_v1_synthetic.yaml"]
KEYS = ["train.epochs", "train.batch_size", "train.log_every", "train.checkpoint_every", "train.seed",
        "train.pipeline", "train.matmul_precision", "data.max_history", "data.max_sequence", "data.source",
        "data.valid_fraction", "data.synthetic.num_users", "data.synthetic.num_items", "data.lifelong.chunk_rows",
        "data.lifelong.enabled", "optim.dense.lr", "optim.dense.betas", "optim.sparse.lr", "optim.sparse.optimizer",
        "sharding.tables", "loss.label_weights", "model.name", "output_dir", "train", "data", "nonsense.key", ""]
VALUES = ["0", "-1", "1", "2", "1.5", "-0.5", "nan", "inf", "1e400", "18446744073709551616", "true", "null", "~",
          "[]", "{}", "[1, 2]", "{a: 1}", "abc", "''", "\"\"", "[", "{", ": :", "!!python/object:os.system ls",
          "&a [*a]", "2020-01-01", "0x10", "- - -"]


@pytest.mark.parametrize("config", CONFIGS)
def test_config_loader_raises_only_our_errors(config, tmp_path):
    valid = Path(config).read_bytes()
    for seed in range(CASES):
        rng = random.Random(f"{config}-{seed}")
        overrides = [f"{rng.choice(KEYS)}={rng.choice(VALUES)}" for _ in range(rng.randint(0, 3))]
        data = mutate(valid, rng) if rng.random() < 0.6 else valid
        path = tmp_path / "c.yaml"
        path.write_bytes(data)
        survives(lambda: load_config(TrainConfig, path, overrides), f"load_config {config} {overrides}", seed, data)
