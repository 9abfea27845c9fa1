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
