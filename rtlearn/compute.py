r"""Where training runs: CPU threads on a shared machine, and several processes under ``torchrun``.

CPU threads
-----------
PyTorch's CPU kernels split each operation over an OpenMP team of
``torch.get_num_threads()`` threads that wait for each other at the end of
every operation, spinning while they wait. When another program keeps one of
the cores busy, the thread that lands on it is descheduled and its team mates
spin until it comes back: a 2-thread U-Net step on a 2-core machine with one
other busy process takes about five times as long as on the idle machine
(0.215 s against 0.041 s), while one thread takes 0.061 s busy or idle. A
laptop with a browser open is such a machine.

:func:`choose_threads` therefore sizes the team by the cores that are free:

.. math::

    n = \max\bigl(1,\; \min(c,\; c - \lceil b - \tau \rceil)\bigr)

with :math:`c` the cores this process may use (its CPU affinity, capped by a
cgroup CPU quota and by torch's default of one thread per physical core),
:math:`b` the cores kept busy by *other* processes and
:math:`\tau = 0.25` a tolerance for background noise. On Linux :math:`b` is
measured directly over a short window (:func:`busy_cores`: the busy time of the
allowed CPUs in ``/proc/stat`` minus this process's own CPU time); elsewhere
it is the one-minute load average (``os.getloadavg``), minus one when
``exclude_self`` (this process counted as one running task). One busy process
on a 2-core machine thus gives one thread; an idle machine gives both.

:func:`apply_threads` applies the rule when training on the CPU starts
(:class:`rtlearn.train.Trainer`). The first of these that is set wins:

1. the ``threads`` argument of :class:`~rtlearn.train.Trainer` / :func:`~rtlearn.train.fit`
   (an int, or ``"auto"`` for the rule);
2. the environment variable ``RTLEARN_THREADS`` (an int, or ``auto``);
3. a count fixed by the user: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the
   environment, :func:`pin_threads`, or a ``torch.set_num_threads`` call (seen
   as a count that differs from torch's start-up default, or from the count
   this module set last);
4. otherwise the rule, measured again when more than :data:`REMEASURE_SECONDS`
   have passed since the last measurement (every chapter arm calls the trainer).

``OMP_WAIT_POLICY=PASSIVE`` (sleep instead of spinning) is not used: OpenMP
reads it once, when torch loads its OpenMP runtime at ``import torch``, so a
library cannot set it afterwards; and set before the import it still took
0.111 s per step under load, slower than one thread, and slows the idle case.

The choice depends on the machine's load, and a different thread count can
change the last bits of a result; for bit-identical reruns on a shared machine
fix the count (``RTLEARN_THREADS=1``).

Several processes (DistributedDataParallel)
-------------------------------------------
Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment)
:func:`init_distributed` joins the process group (NCCL on GPUs, one GPU per
process chosen by ``LOCAL_RANK``; gloo on the CPU), and the trainer wraps the
model in :class:`~torch.nn.parallel.DistributedDataParallel`. :func:`rank`,
:func:`world_size` and :func:`is_main` tell a process where it stands;
:func:`barrier` waits for all of them.
"""
from __future__ import annotations

import math
import os
import time

__all__ = ["TOLERANCE", "REMEASURE_SECONDS", "usable_cores", "parse_proc_stat", "busy_cores", "choose_threads",
           "thread_source", "apply_threads", "pin_threads", "init_distributed", "is_distributed", "rank",
           "world_size", "local_rank", "is_main",
           "barrier"]

#: Busy cores of other processes below this fraction of a core are background noise (:func:`choose_threads`).
TOLERANCE = 0.25
#: :func:`apply_threads` reuses an automatic choice made less than this many seconds ago (it costs a 0.25 s sample).
REMEASURE_SECONDS = 30.0
_ENV = "RTLEARN_THREADS"
_state = {"set": None, "pinned": None}


# ---- cores -------------------------------------------------------------------------------------------------------
def _affinity() -> set:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_quota():
    """Cores allowed by a cgroup v2 CPU quota (``cpu.max``), or None."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    n = len(_affinity()) or 1
    quota = _cgroup_quota()
    return min(n, quota) if quota else n


def parse_proc_stat(text: str, cpus) -> tuple | None:
    """``(busy, total)`` jiffies of the CPUs numbered ``cpus`` in the text of ``/proc/stat``; None if none is listed.

    Busy time is everything but idle, iowait and steal (guest time is already
    counted in user time).
    """
    busy = total = 0
    found = False
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        try:
            k = int(name[3:])
            v = [int(x) for x in fields]
        except ValueError:
            continue
        if k not in cpus or len(v) < 4:
            continue
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        steal = v[7] if len(v) > 7 else 0
        t = sum(v[:8])
        busy += t - idle - steal
        total += t - steal
        found = True
    return (busy, total) if found else None


def _proc_stat_busy(cpus) -> tuple | None:
    try:
        with open("/proc/stat") as fh:
            return parse_proc_stat(fh.read(), cpus)
    except OSError:
        return None


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def busy_cores(window: float = 0.25, *, exclude_self: bool = True) -> float:
    """Cores kept busy by other processes, measured over ``window`` seconds (Linux), else from the load average.

    On Linux: the busy time of the CPUs in this process's affinity during the
    window (``/proc/stat``) minus this process's own CPU time in it, divided by
    the window. Elsewhere: ``os.getloadavg()[0]``, minus one when
    ``exclude_self`` (this process counted as one running task), at least 0.
    Returns 0.0 when neither is available.
    """
    if not (isinstance(window, (int, float)) and window > 0):
        raise ValueError(f"window must be a positive number of seconds, got {window!r}")
    cpus = _affinity()
    first = _proc_stat_busy(cpus)
    if first is not None:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        own0, t0 = _own_cpu_seconds(), time.perf_counter()
        time.sleep(window)
        second = _proc_stat_busy(cpus)
        own1, t1 = _own_cpu_seconds(), time.perf_counter()
        if second is not None and t1 > t0:
            busy = (second[0] - first[0]) / hz
            own = (own1 - own0) if exclude_self else 0.0
            return max(0.0, (busy - own) / (t1 - t0))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load - (1.0 if exclude_self else 0.0))


def choose_threads(cores: int | None = None, busy: float | None = None, *, tolerance: float = TOLERANCE) -> int:
    r"""Intra-op threads for training on a machine where ``busy`` of ``cores`` are used by others.

    :math:`n = \max(1, \min(c, c - \lceil b - \tau\rceil))`: one thread per core
    that other processes leave free, at least one. ``cores`` defaults to
    :func:`usable_cores`, ``busy`` to :func:`busy_cores`.

    Examples
    --------
    >>> choose_threads(2, 0.0), choose_threads(2, 1.0), choose_threads(2, 0.2), choose_threads(8, 2.6)
    (2, 1, 2, 5)
    """
    cores = usable_cores() if cores is None else cores
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")
    busy = busy_cores() if busy is None else busy
    if isinstance(busy, bool) or not isinstance(busy, (int, float)) or not math.isfinite(busy) or busy < 0:
        raise ValueError(f"busy must be a finite number of cores >= 0, got {busy!r}")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance!r}")
    taken = max(0, math.ceil(busy - tolerance))
    return max(1, min(cores, cores - taken))


def _parse_threads(value, what: str):
    """``"auto"`` or a positive int (from an argument or the environment)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{what} must be a positive int or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int or 'auto', got {value!r}")
    return value


def _torch_default_threads() -> int:
    """The intra-op thread count torch starts with when no variable sets it: the physical cores."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    cores = set()
    for cpu in range(os.cpu_count() or 1):
        try:
            cores.add(open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").read().strip())
        except OSError:
            try:
                cores.add(open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read().strip())
            except OSError:
                return os.cpu_count() or 1
    return len(cores) or (os.cpu_count() or 1)


def thread_source(threads=None, *, environ=None, current: int | None = None, default: int | None = None):
    """Which rule of the precedence (module docstring) decides the thread count, and its value.

    Returns
    -------
    (str, int or "auto" or None)
        ``("argument", n)``, ``("RTLEARN_THREADS", n or "auto")``, ``("user", None)``
        (a count fixed by the user is kept) or ``("auto", "auto")``.
    """
    environ = os.environ if environ is None else environ
    if threads is not None:
        return "argument", _parse_threads(threads, "threads")
    if environ.get(_ENV, "").strip():
        return _ENV, _parse_threads(environ[_ENV], _ENV)
    if _state["pinned"] is not None:
        return "user", None
    if any(environ.get(k, "").strip() for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return "user", None
    if current is None:
        import torch

        current = torch.get_num_threads()
    expected = _state["set"] if _state["set"] is not None else (
        _torch_default_threads() if default is None else default)
    if current != expected:
        return "user", None
    return "auto", "auto"


def apply_threads(threads=None) -> tuple:
    """Set torch's intra-op thread count by the precedence of the module docstring; return ``(threads, source)``.

    Parameters
    ----------
    threads : int or "auto", optional
        An explicit count (highest precedence) or ``"auto"`` for :func:`choose_threads`.
    """
    import torch

    source, value = thread_source(threads)
    if value is None:
        return torch.get_num_threads(), source
    if value == "auto":
        now = time.monotonic()
        last = _state.get("auto")
        if last is not None and now - last[0] < REMEASURE_SECONDS:
            n = last[1]
        else:  # no more threads than torch's default (the physical cores), no more than the free cores
            n = choose_threads(min(usable_cores(), _torch_default_threads()))
            _state["auto"] = (now, n)
    else:
        n = value
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _state["set"] = n
    return n, source


def pin_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` and keep that count: the trainer's rule no longer changes it."""
    import torch

    n = _parse_threads(n, "threads")
    if n == "auto":
        _state["pinned"] = None
        return
    torch.set_num_threads(n)
    _state["pinned"] = n


# ---- several processes -----------------------------------------------------------------------------------------
def world_size() -> int:
    """Number of processes of the run (1 outside ``torchrun``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def rank() -> int:
    """This process's rank (0 outside ``torchrun``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 outside ``torchrun``)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Whether this process is rank 0 (the one that logs and writes files)."""
    return rank() == 0


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group when started by ``torchrun`` with ``WORLD_SIZE > 1``; return whether one is running.

    The backend defaults to NCCL when CUDA is available (and then this process
    uses GPU ``LOCAL_RANK``), else gloo. Does nothing outside ``torchrun`` or when
    a group is already running.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE > 1 but {missing} are not set: start the run with torchrun")
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    import atexit

    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process of the group (nothing outside ``torchrun``)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
