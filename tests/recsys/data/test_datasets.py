"""``fetch_dataset`` downloads a named set into the cache folder once, verifying checksums, from the
original sources' layout (served here from file:// folders: no network)."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from recsys.cli import DATASET_NAMES, main
from recsys.data import datasets
from recsys.data.datasets import DATASETS, S3RecSet, data_home, fetch_dataset
from recsys.errors import ConfigError, DataError

SHARED_S3REC = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "amazon-s3rec"
U_DATA = "1\t2\t3\t881250949\n2\t2\t5\t881250950\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_beauty(tmp_path, monkeypatch):
    """A served folder holding a small Beauty set, pinned in DATASETS; yields its file:// URL."""
    www = tmp_path / "www"
    www.mkdir()
    files = {"Beauty.txt": b"1 5 6 7\n2 6 7 8\n", "Beauty_item2attributes.json": b'{"5": [1]}'}
    for name, data in files.items():
        (www / name).write_bytes(data)
    monkeypatch.setitem(DATASETS, "amazon-beauty", S3RecSet({name: sha256(data) for name, data in files.items()}))
    return www.as_uri()


def test_fetches_into_the_cache_once(tmp_path, fake_beauty):
    folder = fetch_dataset("amazon-beauty", root=tmp_path / "cache", base_url=fake_beauty)
    assert folder == tmp_path / "cache" / "amazon-beauty"
    assert (folder / "Beauty.txt").read_bytes() == b"1 5 6 7\n2 6 7 8\n"
    assert sorted(p.name for p in folder.iterdir()) == ["Beauty.txt", "Beauty_item2attributes.json"]
    nowhere = (tmp_path / "empty").as_uri()
    assert fetch_dataset("amazon-beauty", root=tmp_path / "cache", base_url=nowhere) == folder  # nothing to download


def test_a_checksum_mismatch_leaves_nothing_behind(tmp_path, fake_beauty):
    (Path(fake_beauty.removeprefix("file://")) / "Beauty.txt").write_bytes(b"tampered\n")
    with pytest.raises(DataError, match="SHA-256"):
        fetch_dataset("amazon-beauty", root=tmp_path / "cache", base_url=fake_beauty)
    assert not (tmp_path / "cache" / "amazon-beauty" / "Beauty.txt").exists()
    assert not list((tmp_path / "cache" / "amazon-beauty").glob(".Beauty.txt.*"))


def test_an_unreachable_source_says_how_to_fetch_by_hand(tmp_path, fake_beauty):
    with pytest.raises(DataError, match="by hand"):
        fetch_dataset("amazon-beauty", root=tmp_path, base_url=(tmp_path / "missing").as_uri())


def test_movielens_is_checked_against_the_published_md5(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "ml-100k.zip", "w") as zf:
        zf.writestr("ml-100k/u.data", U_DATA)
    (www / "ml-100k.zip.md5").write_text(hashlib.md5((www / "ml-100k.zip").read_bytes()).hexdigest())
    folder = fetch_dataset("ml-100k", root=tmp_path / "cache", base_url=www.as_uri())
    assert (folder / "u.data").read_text() == U_DATA


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch, fake_beauty):
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "env-cache"))
    assert data_home() == tmp_path / "env-cache"
    assert fetch_dataset("amazon-beauty", base_url=fake_beauty) == tmp_path / "env-cache" / "amazon-beauty"
    monkeypatch.delenv("RECSYS_DATA")
    assert data_home() == Path.home() / ".cache" / "recsys-zoo" / "data"


def test_unknown_names_are_refused():
    with pytest.raises(ConfigError, match="amazon-beauty"):
        fetch_dataset("amazon-books")


def test_cli_fetch_prints_the_folder_and_names_match(tmp_path, capsys, fake_beauty):
    assert sorted(DATASET_NAMES) == sorted(DATASETS)
    assert main(["data", "fetch", "amazon-beauty", "--root", str(tmp_path), "--url", fake_beauty]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "amazon-beauty")


@pytest.mark.real_data
@pytest.mark.skipif(not SHARED_S3REC.is_dir(), reason="needs ../shared/data/amazon-s3rec")
@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports"])
def test_pinned_checksums_are_those_of_the_published_s3rec_files(tmp_path, name):
    folder = fetch_dataset(name, root=tmp_path, base_url=SHARED_S3REC.as_uri())
    for file_name, expected in datasets.DATASETS[name].files.items():
        assert sha256((folder / file_name).read_bytes()) == expected


def test_a_config_names_a_cached_set_and_download_fetches_it(tmp_path, monkeypatch, fake_beauty):
    from recsys.config import load_config
    from recsys.data.pipeline import load_events
    from recsys.data.datasets import dataset_path
    from recsys.train.config import TrainConfig

    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="recsys data fetch amazon-beauty"):
        dataset_path("dataset:amazon-beauty/Beauty.txt")
    with pytest.raises(ConfigError, match="amazon-sports"):
        dataset_path("dataset:amazon-books")
    monkeypatch.setattr(datasets, "S3REC_URL", fake_beauty)
    cfg = load_config(TrainConfig, "configs/hstu/beauty.yaml",
                      ["data.path=dataset:amazon-beauty/Beauty.txt", "data.download=true"])
    log = load_events(cfg.data)
    assert log.num_users == 2 and (tmp_path / "cache" / "amazon-beauty" / "Beauty.txt").is_file()


# ------------------------------------------------------------------ --from: a verified local copy
SHARED_FOLDER = {"amazon-beauty": "amazon-s3rec", "amazon-sports": "amazon-s3rec", "ml-100k": "ml-100k",
                 "ml-latest-small": "ml-latest-small"}


def local_copy(shared_data, name: str, into: Path) -> Path:
    """A writable folder holding the real files of ``name`` (skips when the shared data is absent)."""
    into.mkdir()
    for file_name in datasets.pinned_files(name):
        (into / file_name).write_bytes((shared_data(SHARED_FOLDER[name]) / file_name).read_bytes())
    return into


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports", "ml-100k", "ml-latest-small"])
def test_from_copies_the_real_files_verified_and_once(tmp_path, shared_data, name):
    source = shared_data(SHARED_FOLDER[name])
    folder = fetch_dataset(name, root=tmp_path / "cache", source=source)
    assert folder == tmp_path / "cache" / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(datasets.pinned_files(name))  # no staging left
    for file_name, expected in datasets.pinned_files(name).items():
        assert sha256((folder / file_name).read_bytes()) == expected
        assert (folder / file_name).read_bytes() == (source / file_name).read_bytes()
    assert fetch_dataset(name, root=tmp_path / "cache", source=tmp_path / "nowhere") == folder  # nothing to copy


@pytest.mark.real_data
def test_from_a_tampered_real_file_names_it_and_both_digests_and_copies_nothing(tmp_path, shared_data):
    source = local_copy(shared_data, "ml-100k", tmp_path / "ml-100k")
    (source / "u.item").write_bytes((source / "u.item").read_bytes()[:-10])  # truncated
    actual = sha256((source / "u.item").read_bytes())
    with pytest.raises(DataError) as raised:
        fetch_dataset("ml-100k", root=tmp_path / "cache", source=source)
    message = str(raised.value)
    assert str(source / "u.item") in message and actual in message
    assert datasets.MOVIELENS_FILES["ml-100k"]["u.item"] in message
    assert list((tmp_path / "cache" / "ml-100k").iterdir()) == []  # not even the good u.data


def test_from_a_tampered_file_raises_and_leaves_the_cache_as_it_was(tmp_path, fake_beauty):
    source = Path(fake_beauty.removeprefix("file://"))
    (source / "Beauty_item2attributes.json").write_bytes(b'{"5": [2]}')
    with pytest.raises(DataError, match=r"Beauty_item2attributes\.json: SHA-256 [0-9a-f]{64} is not the expected"):
        fetch_dataset("amazon-beauty", root=tmp_path / "cache", source=source)
    assert list((tmp_path / "cache" / "amazon-beauty").iterdir()) == []


def test_from_a_folder_missing_a_file_names_it(tmp_path, fake_beauty):
    source = Path(fake_beauty.removeprefix("file://"))
    (source / "Beauty.txt").unlink()
    with pytest.raises(DataError, match="lacks Beauty.txt of amazon-beauty"):
        fetch_dataset("amazon-beauty", root=tmp_path / "cache", source=source)
    with pytest.raises(DataError, match="is not a folder"):
        fetch_dataset("amazon-beauty", root=tmp_path / "cache", source=tmp_path / "missing")


def test_from_is_refused_where_no_file_checksums_are_pinned(tmp_path, fake_beauty):
    with pytest.raises(ConfigError, match="ml-1m has no pinned file checksums"):
        fetch_dataset("ml-1m", root=tmp_path, source=tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        fetch_dataset("amazon-beauty", root=tmp_path, base_url=fake_beauty, source=tmp_path)


def test_cli_fetch_from_copies_the_folder(tmp_path, capsys, fake_beauty):
    source = Path(fake_beauty.removeprefix("file://"))
    assert main(["data", "fetch", "amazon-beauty", "--root", str(tmp_path / "cache"), "--from", str(source)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "amazon-beauty")
    assert (tmp_path / "cache" / "amazon-beauty" / "Beauty.txt").read_bytes() == b"1 5 6 7\n2 6 7 8\n"


# ------------------------------------------------------------------ the configs that read these sets
REPO = Path(__file__).resolve().parents[3]
DATASET_CONFIGS = {
    "amazon-beauty": ["hstu/beauty.yaml", "hstu/beauty_cpu.yaml", "sasrec/beauty.yaml"],
    "amazon-sports": ["hstu/sports.yaml", "sasrec/sports.yaml"],
    "ml-100k": ["hstu/ml100k.yaml", "sasrec/ml100k.yaml", "dlrm/ml100k.yaml", "transact/pinnability_ml100k.yaml",
                "transact/bst_ml100k.yaml", "transact/transact_v1_ml100k.yaml"],
}
EVENTS = {"amazon-beauty": (198_502, 22_363), "amazon-sports": (296_337, 35_598), "ml-100k": (100_000, 943)}


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(DATASET_CONFIGS))
def test_configs_read_the_set_fetched_from_a_local_copy(tmp_path, monkeypatch, shared_data, name):
    from recsys.config import load_config
    from recsys.data.pipeline import load_events
    from recsys.train.config import TrainConfig

    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "cache"))
    assert main(["data", "fetch", name, "--from", str(shared_data(SHARED_FOLDER[name]))]) == 0
    for config in DATASET_CONFIGS[name]:
        text = (REPO / "configs" / config).read_text()
        assert f"recsys data fetch {name}" in text, config  # the header says how to get the data
        cfg = load_config(TrainConfig, REPO / "configs" / config)
        assert cfg.data.path.startswith(f"dataset:{name}") and not cfg.data.download, config
    log = load_events(cfg.data)
    assert (len(log.user_id), log.num_users) == EVENTS[name]
