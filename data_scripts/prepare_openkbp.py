#!/usr/bin/env python
"""Convert an OpenKBP release folder (provided-data/ with *-pats/pt_N/*.csv) into rtlearn's packed format.

    python data_scripts/prepare_openkbp.py /path/to/open-kbp/provided-data [--root DIR] [--splits ...]

Writes ``<root>/openkbp/<split>/pt_N.npz`` and ``<root>/openkbp/manifest.json``
(root: ``--root``, else ``$RTLEARN_DATA``, else ``~/.cache/rtlearn``). Patients
already prepared are skipped unless ``--overwrite``. The download script
(``download_openkbp.py``) calls the same code.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    from rtlearn.config import data_root
    from rtlearn.data.openkbp.format import RELEASE_SPLIT_DIRS, SPLITS
    from rtlearn.data.openkbp.prepare import prepare_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("provided_data", type=Path, help="the release's provided-data folder")
    ap.add_argument("--root", default=None, help="output root (data go to ROOT/openkbp)")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--overwrite", action="store_true", help="prepare patients again even if their archive exists")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.provided_data.is_dir():
        print(f"error: {args.provided_data} is not a folder; pass the release's provided-data folder",
              file=sys.stderr)
        return 2
    out = data_root(args.root) / "openkbp"
    done = 0
    for split in args.splits:
        if not (args.provided_data / RELEASE_SPLIT_DIRS[split]).is_dir():
            print(f"{split}: {args.provided_data / RELEASE_SPLIT_DIRS[split]} not found, skipped")
            continue
        try:
            paths = prepare_split(args.provided_data, out, split, overwrite=args.overwrite,
                                  progress=not args.no_progress)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        done += len(paths)
        print(f"{split}: {len(paths)} patients in {out / split}")
    if not done:
        print("error: no split folder (train-pats, validation-pats, test-pats) found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
