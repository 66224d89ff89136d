"""Atomic file writes: nothing a user downloaded or trained is lost on failure.

Every writer here writes to a temporary file in the destination directory and
then renames it over the target with :func:`os.replace`, which is atomic on
POSIX and Windows. An interrupted write leaves the old file (or no file), never
a truncated one that looks complete.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.

    Examples
    --------
    >>> with atomic_path("out.txt") as tmp:          # doctest: +SKIP
    ...     tmp.write_text("done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npz(path: str | os.PathLike, compressed: bool = True, **arrays) -> Path:
    """Atomically write NumPy arrays to ``path`` (``.npz``)."""
    import numpy as np

    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return path


def load_npz(path: str | os.PathLike) -> dict:
    """Load an ``.npz`` archive into a dict, with a clear error if it is missing or corrupt."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(
            f"{path} is corrupt or not an .npz archive ({exc}); delete it and "
            "regenerate or download it again."
        ) from exc


def torch_save(obj, path: str | os.PathLike) -> Path:
    """Atomically :func:`torch.save` ``obj`` to ``path``."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
