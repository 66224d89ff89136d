#!/usr/bin/env python
"""Download the OpenKBP dataset (github.com/ababier/open-kbp, folder provided-data/) and prepare it.

    python data_scripts/download_openkbp.py                      # all splits into ~/.cache/rtlearn/openkbp
    python data_scripts/download_openkbp.py --root /data --splits train validation

What it does, per split:

1. lists the release's files once through the GitHub API (one request, cached as
   ``<root>/openkbp-release/tree-<ref>.json``), giving every CSV's size and git blob hash;
2. downloads the CSVs of patients not yet prepared from raw.githubusercontent.com
   (stdlib ``urllib``), into ``*.part`` files that resume with HTTP Range requests, and
   checks each file's size and git SHA-1 before renaming it into place (an interrupted
   download never leaves a file that looks complete);
3. converts each patient to ``<root>/openkbp/<split>/pt_N.npz`` and updates
   ``manifest.json`` (:func:`rtlearn.data.openkbp.prepare.prepare_patient`), then deletes
   its CSVs unless ``--keep-csv``.

Running it again skips prepared patients and already verified files, so no work is done
twice. The data are MIT-licensed; cite Babier et al., Med Phys 48:5549 (2021).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:          # run from a checkout without installing rtlearn
    sys.path.insert(0, str(REPO_ROOT))

GITHUB_REPO = "ababier/open-kbp"
DEFAULT_REF = "ed9602e68411a45b7c8f039999f897895407d25f"   # pinned commit holding provided-data/
API_URL = "https://api.github.com/repos/{repo}/git/trees/{ref}?recursive=1"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{ref}/{path}"
SPLIT_DIRS = {"train": "train-pats", "validation": "validation-pats", "test": "test-pats"}
CHUNK = 1 << 16
TIMEOUT = 30


class DownloadError(RuntimeError):
    """A download failed; the message says what to do."""


def offline_message(url: str, reason) -> str:
    return (f"Could not reach {url.split('/')[2]} ({reason}).\n"
            "This machine seems to be offline (or a firewall blocks GitHub). To get OpenKBP:\n"
            "  * run this script on a machine with internet access, then copy its output folder\n"
            "    (the 'openkbp/' folder under --root, default ~/.cache/rtlearn) here and set\n"
            "    RTLEARN_DATA to its parent; or\n"
            f"  * download https://github.com/{GITHUB_REPO} (folder provided-data/) by any other means and run\n"
            "    python data_scripts/prepare_openkbp.py /path/to/provided-data")


def _request(url: str, headers: dict | None = None):
    headers = dict(headers or {})
    headers.setdefault("User-Agent", "rtlearn-openkbp-downloader")
    token = os.environ.get("GITHUB_TOKEN")
    if token and "api.github.com" in url:
        headers["Authorization"] = f"Bearer {token}"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        raise DownloadError(offline_message(url, getattr(exc, "reason", exc))) from None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def fetch_tree(ref: str, cache_dir: Path) -> list[dict]:
    """The release's ``provided-data`` blobs ``[{path, size, sha}]`` at ``ref`` (cached on disk)."""
    cache = cache_dir / f"tree-{ref}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except json.JSONDecodeError:
            cache.unlink()
    url = API_URL.format(repo=GITHUB_REPO, ref=ref)
    try:
        with _request(url, {"Accept": "application/vnd.github+json"}) as resp:
            listing = json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise DownloadError(f"GitHub has no ref {ref!r} in {GITHUB_REPO} (HTTP 404); "
                                "pass --ref with a branch name or commit of that repository") from None
        if exc.code in (403, 429):
            raise DownloadError("The GitHub API refused the file listing (rate limit, HTTP "
                                f"{exc.code}); wait an hour or set GITHUB_TOKEN, then run again") from None
        raise DownloadError(f"GitHub API error HTTP {exc.code} for {url}; try again later") from None
    if listing.get("truncated"):
        raise DownloadError("GitHub truncated the file listing; download the repository by hand and run "
                            "data_scripts/prepare_openkbp.py on its provided-data folder")
    blobs = [{"path": e["path"], "size": int(e["size"]), "sha": e["sha"]} for e in listing.get("tree", [])
             if e.get("type") == "blob" and e["path"].startswith("provided-data/") and e["path"].endswith(".csv")]
    if not blobs:
        raise DownloadError(f"no provided-data/*.csv files at ref {ref!r} of {GITHUB_REPO}; pass another --ref")
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(cache, json.dumps(blobs))
    return blobs


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file: SHA-1 of ``b"blob <size>\\0" + content``."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: Path, size: int, sha: str, progress=None, attempts: int = 3) -> bool:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed with HTTP Range), verify size and blob hash.

    A short read is resumed at once (up to ``attempts`` requests); a file of the right size
    but the wrong hash is deleted and fetched again. Returns False if ``dest`` was already
    complete. Raises :class:`DownloadError` on failure, keeping a partial ``.part`` file for
    the next run to resume (never a corrupt one, never ``dest`` itself).
    """
    if dest.is_file() and dest.stat().st_size == size:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    corrupt = False
    for _ in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                resp = _request(url, headers)
            except urllib.error.HTTPError as exc:
                if exc.code == 416:          # range not satisfiable: start again
                    part.unlink(missing_ok=True)
                    continue
                raise DownloadError(f"HTTP {exc.code} for {url}; run the script again later") from None
            with resp:
                mode = "ab" if have and resp.status == 206 else "wb"
                if mode == "wb" and progress and have:
                    progress(-have)
                with open(part, mode) as fh:
                    try:
                        for chunk in iter(lambda: resp.read(CHUNK), b""):
                            fh.write(chunk)
                            if progress:
                                progress(len(chunk))
                    except (socket.timeout, TimeoutError, ConnectionError, OSError,
                            http.client.HTTPException):
                        pass                 # short read: resumed by the next attempt
        got = part.stat().st_size if part.is_file() else 0
        if got < size:
            continue
        if got == size and git_blob_sha1(part) == sha:
            os.replace(part, dest)
            return True
        if progress:
            progress(-got)
        part.unlink()                         # wrong size or hash: start over
        corrupt = True
    if corrupt:
        raise DownloadError(f"{url} failed its integrity check (size or git SHA-1 mismatch; expected "
                            f"{size} bytes, blob {sha}); run the script again")
    raise DownloadError(f"download of {url} was interrupted {attempts} times; run the script again to resume")


def _patients(blobs: list[dict], split: str) -> dict[str, list[dict]]:
    prefix = f"provided-data/{SPLIT_DIRS[split]}/"
    out: dict[str, list[dict]] = {}
    for b in blobs:
        if b["path"].startswith(prefix):
            pid = b["path"][len(prefix):].split("/")[0]
            out.setdefault(pid, []).append(b)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].removeprefix("pt_"))))


def run(root: Path, splits, ref: str = DEFAULT_REF, keep_csv: bool = False, workers: int = 4,
        prepare: bool = True, progress: bool = True) -> dict:
    """Download and prepare ``splits`` under ``root``; returns counts per split."""
    from tqdm.auto import tqdm

    from rtlearn.data.openkbp.prepare import manifest_keys, prepare_patient, update_manifest
    from rtlearn.io import save_npz

    from rtlearn.data.openkbp.format import patient_ids

    out_root = root / "openkbp"
    raw = root / "openkbp-release"
    if all((out_root / s / f"{pid}.npz").is_file() for s in splits for pid in patient_ids(s)):
        print(f"OpenKBP {', '.join(splits)}: every patient is already prepared in {out_root}; nothing to do")
        return {s: {"patients": len(patient_ids(s)), "already_prepared": len(patient_ids(s))} for s in splits}
    blobs = fetch_tree(ref, raw)
    summary = {}
    for split in splits:
        patients = _patients(blobs, split)
        todo = {pid: files for pid, files in patients.items()
                if not (out_root / split / f"{pid}.npz").is_file()}
        summary[split] = {"patients": len(patients), "already_prepared": len(patients) - len(todo)}
        if not todo:
            print(f"{split}: all {len(patients)} patients already prepared in {out_root / split}")
            continue
        files = [b for fs in todo.values() for b in fs]
        total = sum(b["size"] for b in files)
        lock = threading.Lock()
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {split}", disable=not progress)

        def advance(n):
            with lock:
                bar.update(n)

        def fetch(b):
            dest = raw / b["path"]
            if dest.is_file() and dest.stat().st_size == b["size"]:
                advance(b["size"])
                return
            download_file(RAW_URL.format(repo=GITHUB_REPO, ref=ref, path=b["path"]), dest, b["size"], b["sha"],
                          advance)

        entries = {}
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for pid, fs in todo.items():
                    list(pool.map(fetch, fs))
                    if not prepare:
                        continue
                    csv_dir = raw / "provided-data" / SPLIT_DIRS[split] / pid
                    arrays = prepare_patient(csv_dir)
                    save_npz(out_root / split / f"{pid}.npz", **arrays)
                    entries[f"{split}/{pid}"] = manifest_keys(arrays)
                    if not keep_csv:
                        shutil.rmtree(csv_dir)
        finally:
            bar.close()
            if entries:
                update_manifest(out_root, entries)
        summary[split]["prepared_now"] = len(entries)
    return summary


def main(argv=None) -> int:
    from rtlearn.config import data_root

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None,
                    help="target folder (default: $RTLEARN_DATA or ~/.cache/rtlearn); data go to ROOT/openkbp")
    ap.add_argument("--splits", nargs="+", default=list(SPLIT_DIRS), choices=list(SPLIT_DIRS))
    ap.add_argument("--ref", default=DEFAULT_REF, help=f"branch or commit of {GITHUB_REPO} (default: pinned)")
    ap.add_argument("--keep-csv", action="store_true", help="keep the downloaded CSVs after preparation")
    ap.add_argument("--no-prepare", action="store_true", help="only download the CSVs")
    ap.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root = data_root(args.root)
    try:
        summary = run(root, args.splits, args.ref, keep_csv=args.keep_csv or args.no_prepare,
                      workers=args.workers, prepare=not args.no_prepare, progress=not args.no_progress)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=1))
    print(f"OpenKBP is ready in {root / 'openkbp'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
