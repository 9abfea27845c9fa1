import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from recsys.data.download import fetch_movielens
from recsys.errors import ConfigError, DataError

U_DATA = "1\t2\t3\t881250949\n2\t2\t5\t881250950\n"


@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path/www`` on 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def publish(www: Path, name: str, checksum: str | None = None) -> None:
    archive = www / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{name}/u.data", U_DATA)
        zf.writestr(f"{name}/README", "test set")
    md5 = checksum or hashlib.md5(archive.read_bytes()).hexdigest()
    (www / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {md5}\n")


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


def test_download_verify_extract(server, tmp_path):
    www, base = server
    publish(www, "ml-100k")
    root = tmp_path / "data"
    folder = fetch_movielens("ml-100k", root, url=f"{base}/ml-100k.zip")
    assert folder == root / "ml-100k"
    assert (folder / "u.data").read_text() == U_DATA and (folder / "README").is_file()
    assert [p.name for p in root.iterdir()] == ["ml-100k"]  # no temporary folder left
    (www / "ml-100k.zip").unlink()  # present files are used as they are, without network
    assert fetch_movielens("ml-100k", root, url=closed_port_url()) == folder


def test_bad_checksum_leaves_nothing(server, tmp_path):
    www, base = server
    publish(www, "ml-100k", checksum="0" * 32)
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"MD5 .* does not match the published 0{32}.*by hand into"):
        fetch_movielens("ml-100k", root, url=f"{base}/ml-100k.zip")
    assert list(root.iterdir()) == []


def test_offline_and_missing(server, tmp_path):
    _, base = server
    with pytest.raises(DataError, match=r"could not download .*download ml-100k.zip .* by hand"):
        fetch_movielens("ml-100k", tmp_path, url=closed_port_url())
    with pytest.raises(DataError, match=r"could not download .*ml-1m.zip.md5"):
        fetch_movielens("ml-1m", tmp_path, url=f"{base}/ml-1m.zip")  # 404
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]
    with pytest.raises(ConfigError, match="ml-100k"):
        fetch_movielens("ml-5m", tmp_path)
