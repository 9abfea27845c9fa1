import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from recsys.data.download import SNAP_AMAZON_URL, fetch_amazon_ratings, fetch_movielens
from recsys.data.pipeline import fetch_source
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


# ------------------------------------------------------------------ Amazon ratings-only files
RATINGS = "A1ZQ1LUQ9R6JHZ,0001712799,5.0,1191456000\nA2BBQW8T1LJ4NS,0001712799,3.0,1200000000\n"


class ShortBodyHandler(QuietHandler):
    """Announces 1,000 bytes and sends the first line only."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(RATINGS.splitlines(keepends=True)[0].encode())


def test_amazon_ratings_download_checks_and_moves(server, tmp_path):
    www, base = server
    (www / "ratings_Books.csv").write_text(RATINGS)
    target = tmp_path / "data" / "amzn-books" / "ratings_Books.csv"
    assert fetch_amazon_ratings(target, url=f"{base}/ratings_Books.csv") == target
    assert target.read_text() == RATINGS and [p.name for p in target.parent.iterdir()] == ["ratings_Books.csv"]
    assert fetch_amazon_ratings(target, url=closed_port_url()) == target  # present: no network


def test_amazon_ratings_rejects_other_content(server, tmp_path):
    www, base = server
    (www / "index.html").write_text("<html><body>Not Found</body></html>\n")
    target = tmp_path / "amzn" / "ratings_Books.csv"
    with pytest.raises(DataError, match=r"is not an Amazon ratings-only file: its first line is '<html>"):
        fetch_amazon_ratings(target, url=f"{base}/index.html")
    with pytest.raises(DataError, match=r"could not download .*404.*by hand to .*ratings_Books.csv"):
        fetch_amazon_ratings(target, url=f"{base}/ratings_Beauty.csv")
    assert list(target.parent.iterdir()) == []  # nothing half-written left


def test_amazon_ratings_incomplete_download(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ShortBodyHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        target = tmp_path / "ratings_Books.csv"
        url = f"http://127.0.0.1:{httpd.server_address[1]}/ratings_Books.csv"
        with pytest.raises(DataError, match=r"received 41 bytes of the announced 1000; the download is incomplete"):
            fetch_amazon_ratings(target, url=url)
        assert list(tmp_path.iterdir()) == []
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_amazon_ratings_name_and_pipeline(tmp_path):
    with pytest.raises(ConfigError, match=r"books.csv is not the name of an Amazon ratings-only file"):
        fetch_amazon_ratings(tmp_path / "books.csv")
    assert SNAP_AMAZON_URL.endswith("/data/amazon/productGraph/categoryFiles")
    present = tmp_path / "ratings_Books.csv"
    present.write_text(RATINGS)
    assert fetch_source("amazon_ratings", present) == present
    with pytest.raises(ConfigError, match=r"data.download works for sources movielens and amazon_ratings only"):
        fetch_source("amazon", tmp_path / "Beauty.txt")
