"""data_scripts/download_openkbp.py against a local HTTP server (offline, resume, integrity, no work twice)."""
from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def dl():
    spec = importlib.util.spec_from_file_location("download_openkbp", REPO / "data_scripts" / "download_openkbp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fake_release():
    """A tiny release: one training patient pt_3 (sparse CSVs)."""
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(128**3, 400, replace=False))
    files = {
        "dose.csv": ",data\n" + "".join(f"{i},{v:.3f}\n" for i, v in zip(idx, rng.uniform(0, 70, idx.size))),
        "possible_dose_mask.csv": ",data\n" + "".join(f"{i},\n" for i in idx),
        "PTV70.csv": ",data\n" + "".join(f"{i},\n" for i in idx[:50]),
        "ct.csv": ",data\n" + "".join(f"{i},{v}.0\n" for i, v in zip(idx, rng.integers(0, 4000, idx.size))),
        "voxel_dimensions.csv": "3.906\n3.906\n2.5\n",
    }
    return {f"provided-data/train-pats/pt_3/{k}": v.encode() for k, v in files.items()}


class _Server:
    """Serves /api/... (the tree listing) and /raw/<repo>/<ref>/<path> with Range support."""

    def __init__(self, files):
        self.files, self.requests, self.truncate, self.corrupt = files, [], {}, set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith("/api/"):
                    tree = [{"path": p, "type": "blob", "size": len(b), "sha": _blob_sha(b)} for p, b in server.files.items()]
                    body = json.dumps({"tree": tree, "truncated": False}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                path = self.path.split("/", 5)[-1]
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                if path in server.corrupt:
                    data = data[:-3] + b"xyz"
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate.get(path, 0) > 0:
                    server.truncate[path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(dl, monkeypatch):
    srv = _Server(_fake_release())
    monkeypatch.setattr(dl, "API_URL", f"http://127.0.0.1:{srv.port}/api/{{repo}}/{{ref}}")
    monkeypatch.setattr(dl, "RAW_URL", f"http://127.0.0.1:{srv.port}/raw/{{repo}}/{{ref}}/{{path}}")
    monkeypatch.setattr(dl, "TIMEOUT", 5)
    yield srv
    srv.close()


def test_offline_gives_actionable_message(dl, tmp_path, monkeypatch, capsys):
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    rc = dl.main(["--root", str(tmp_path / "root"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "offline" in err and "prepare_openkbp.py" in err and "Traceback" not in err
    assert not list((tmp_path / "root").rglob("*.npz")) and not list((tmp_path / "root").rglob("*.csv"))


def test_download_prepare_and_second_run_does_nothing(dl, server, tmp_path):
    from rtlearn.data.openkbp.prepare import prepare_patient

    root = tmp_path / "root"
    summary = dl.run(root, ["train"], ref="abc", progress=False)
    assert summary["train"] == {"patients": 1, "already_prepared": 0, "prepared_now": 1}
    npz = root / "openkbp" / "train" / "pt_3.npz"
    assert npz.is_file()
    assert not (root / "openkbp-release" / "provided-data" / "train-pats" / "pt_3").exists()   # CSVs removed
    src = tmp_path / "src"
    for path, data in server.files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    ref = prepare_patient(src / "provided-data" / "train-pats" / "pt_3")
    with np.load(npz) as z:
        assert set(z.files) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(z[k], ref[k])
    assert json.loads((root / "openkbp" / "manifest.json").read_text())["train/pt_3"] == [
        "PTV70", "ct", "dose_cgy", "possible_dose_mask"]
    n = len(server.requests)
    again = dl.run(root, ["train"], ref="abc", progress=False)
    assert again["train"]["already_prepared"] == 1 and len(server.requests) == n   # no request at all


def test_short_read_is_resumed_with_range(dl, server, tmp_path):
    path = "provided-data/train-pats/pt_3/dose.csv"
    data = server.files[path]
    dest = tmp_path / "dose.csv"
    server.truncate[path] = 1
    assert dl.download_file(dl.RAW_URL.format(repo="a/b", ref="x", path=path), dest, len(data), _blob_sha(data))
    assert dest.read_bytes() == data and not dest.with_name("dose.csv.part").exists()
    assert server.requests[-2][1] is None and server.requests[-1][1] == f"bytes={len(data) // 2}-"


def test_interrupted_download_leaves_part_and_resumes_next_run(dl, server, tmp_path):
    path = "provided-data/train-pats/pt_3/dose.csv"
    data = server.files[path]
    url = dl.RAW_URL.format(repo="a/b", ref="x", path=path)
    dest = tmp_path / "dose.csv"
    server.truncate[path] = 3                                  # every attempt of this run breaks off
    with pytest.raises(dl.DownloadError, match="interrupted.*run the script again"):
        dl.download_file(url, dest, len(data), _blob_sha(data))
    assert not dest.exists()                                   # nothing that looks complete
    part = dest.with_name("dose.csv.part")
    assert 0 < part.stat().st_size < len(data)
    assert dl.download_file(url, dest, len(data), _blob_sha(data)) is True
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")
    assert dl.download_file(url, dest, len(data), _blob_sha(data)) is False   # already complete


def test_integrity_failure_leaves_nothing(dl, server, tmp_path):
    path = "provided-data/train-pats/pt_3/ct.csv"
    data = server.files[path]
    server.corrupt.add(path)
    dest = tmp_path / "ct.csv"
    with pytest.raises(dl.DownloadError, match="integrity"):
        dl.download_file(dl.RAW_URL.format(repo="a/b", ref="x", path=path), dest, len(data), _blob_sha(data))
    assert not dest.exists() and not dest.with_name("ct.csv.part").exists()


def test_git_blob_sha_matches_git(dl, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"hello\n")
    assert dl.git_blob_sha1(p) == "ce013625030ba8dba906f756967f9e9ca394464a"   # `git hash-object` of "hello\n"


def test_unknown_ref_message(dl, server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "API_URL", f"http://127.0.0.1:{server.port}/nothing/{{repo}}/{{ref}}")

    def not_found(*a, **k):
        raise urllib.error.HTTPError("u", 404, "Not Found", {}, None)

    monkeypatch.setattr(dl.urllib.request, "urlopen", not_found)
    with pytest.raises(dl.DownloadError, match="--ref"):
        dl.fetch_tree("nope", tmp_path)
