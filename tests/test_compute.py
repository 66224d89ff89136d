"""rtlearn.compute: the CPU-thread rule (mocked load and affinity) and its precedence; process-group helpers."""
import types

import pytest
import torch

from rtlearn import compute
from rtlearn.train import Trainer

STAT = """cpu  500 0 100 1000 0 0 0 0 0 0
cpu0 100 0 50 500 20 0 0 10 0 0
cpu1 300 5 40 400 0 0 0 0 0 0
cpu2 999 0 0 1 0 0 0 0 0 0
intr 12345
"""


@pytest.fixture()
def clean(monkeypatch):
    """A fresh rule state, no thread variables, and torch's thread count restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(compute, "_state", {"set": None, "pinned": None})
    for key in ("RTLEARN_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2), (2, 0.2, 2), (2, 0.3, 1), (2, 1.0, 1), (2, 1.9, 1), (2, 5.0, 1), (1, 0.0, 1),
    (16, 3.0, 13), (16, 2.6, 13), (16, 2.2, 14), (8, 0.25, 8),
])
def test_choose_threads_rule(cores, busy, expected):
    # brute force of the rule: the most threads t with t + (others rounded up past the tolerance) <= cores
    others = next(k for k in range(100) if busy - compute.TOLERANCE <= k)
    brute = max([t for t in range(1, cores + 1) if t + others <= cores] or [1])
    assert compute.choose_threads(cores, busy) == expected == brute


@pytest.mark.parametrize("kw", [dict(cores=0, busy=0.0), dict(cores=2.0, busy=0.0), dict(cores=2, busy=-1.0),
                                dict(cores=2, busy=float("nan")), dict(cores=True, busy=0.0)])
def test_choose_threads_rejects_bad_input(kw):
    with pytest.raises(ValueError):
        compute.choose_threads(**kw)


def test_parse_proc_stat_counts_only_allowed_cpus():
    # cpu0: total 680 - steal 10 = 670, idle + iowait 520 -> busy 150; cpu1: total 745, idle 400 -> busy 345
    assert compute.parse_proc_stat(STAT, {0}) == (150, 670)
    assert compute.parse_proc_stat(STAT, {0, 1}) == (495, 1415)
    assert compute.parse_proc_stat(STAT, {7}) is None


def test_busy_cores_subtracts_own_cpu_time(monkeypatch):
    hz = compute.os.sysconf("SC_CLK_TCK")
    # a 0.5 s window: the allowed CPUs were busy for 0.8 CPU-seconds, 0.3 of them this process's own,
    # so other processes kept (0.8 - 0.3) / 0.5 = 1.0 core busy
    stats = iter([(1000, 5000), (1000 + int(0.8 * hz), 5000 + hz)])
    own = iter([10.0, 10.3])
    clock = iter([100.0, 100.5])
    monkeypatch.setattr(compute, "_proc_stat_busy", lambda cpus: next(stats))
    monkeypatch.setattr(compute, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(compute, "time", types.SimpleNamespace(sleep=lambda s: None, perf_counter=lambda: next(clock),
                                                               monotonic=lambda: 0.0))
    assert compute.busy_cores(0.5) == pytest.approx(1.0)


def test_busy_cores_falls_back_to_load_average(monkeypatch):
    monkeypatch.setattr(compute, "_proc_stat_busy", lambda cpus: None)
    monkeypatch.setattr(compute.os, "getloadavg", lambda: (2.5, 1.0, 1.0))
    assert compute.busy_cores(0.01) == pytest.approx(1.5)
    assert compute.busy_cores(0.01, exclude_self=False) == pytest.approx(2.5)
    monkeypatch.setattr(compute.os, "getloadavg", lambda: (0.4, 1.0, 1.0))
    assert compute.busy_cores(0.01) == 0.0


def test_busy_cores_measures_this_machine():
    b = compute.busy_cores(0.05)
    assert 0.0 <= b <= len(compute.os.sched_getaffinity(0)) + 0.5


def test_thread_source_precedence(clean):
    env = {}
    assert compute.thread_source(3, environ={"RTLEARN_THREADS": "1"}, current=5, default=2) == ("argument", 3)
    assert compute.thread_source("auto", environ=env, current=5, default=2) == ("argument", "auto")
    assert compute.thread_source(None, environ={"RTLEARN_THREADS": "2", "OMP_NUM_THREADS": "1"},
                                 current=1, default=2) == ("RTLEARN_THREADS", 2)
    assert compute.thread_source(None, environ={"RTLEARN_THREADS": " auto "}, current=1,
                                 default=2) == ("RTLEARN_THREADS", "auto")
    assert compute.thread_source(None, environ={"OMP_NUM_THREADS": "1"}, current=1, default=2) == ("user", None)
    assert compute.thread_source(None, environ=env, current=1, default=2) == ("user", None)  # set_num_threads(1)
    assert compute.thread_source(None, environ=env, current=2, default=2) == ("auto", "auto")
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError):
            compute.thread_source(bad, environ=env, current=2, default=2)
    with pytest.raises(ValueError, match="RTLEARN_THREADS"):
        compute.thread_source(None, environ={"RTLEARN_THREADS": "many"}, current=2, default=2)


def _mock_machine(monkeypatch, cores, busy):
    monkeypatch.setattr(compute, "usable_cores", lambda: cores)
    monkeypatch.setattr(compute, "_torch_default_threads", lambda: cores)
    monkeypatch.setattr(compute, "busy_cores", lambda *a, **k: busy)


def test_apply_threads_follows_the_load(clean):
    _mock_machine(clean, 2, 1.0)
    torch.set_num_threads(2)
    assert compute.apply_threads() == (1, "auto") and torch.get_num_threads() == 1
    clean.setattr(compute, "_state", {"set": None, "pinned": None})
    _mock_machine(clean, 2, 0.0)
    torch.set_num_threads(2)
    assert compute.apply_threads() == (2, "auto") and torch.get_num_threads() == 2
    # a later call within REMEASURE_SECONDS reuses the choice; the count it set is not mistaken for the user's
    _mock_machine(clean, 2, 1.0)
    assert compute.apply_threads() == (2, "auto")


def test_user_choice_is_kept(clean):
    _mock_machine(clean, 2, 1.0)
    torch.set_num_threads(2)
    compute.apply_threads()                 # the rule: 1 thread
    torch.set_num_threads(2)                # then the user asks for 2
    assert compute.apply_threads() == (2, "user") and torch.get_num_threads() == 2
    compute.pin_threads(2)
    clean.setattr(compute, "_state", {"set": None, "pinned": 2})
    assert compute.apply_threads() == (2, "user")
    clean.setenv("OMP_NUM_THREADS", "2")
    clean.setattr(compute, "_state", {"set": None, "pinned": None})
    assert compute.apply_threads() == (2, "user")
    clean.setenv("RTLEARN_THREADS", "1")
    assert compute.apply_threads() == (1, "RTLEARN_THREADS") and torch.get_num_threads() == 1


def test_trainer_applies_the_rule_on_cpu(clean):
    _mock_machine(clean, 2, 1.0)
    torch.set_num_threads(2)
    data = [{"input": torch.randn(2, 1, 4, 4), "target": torch.randn(2, 1, 4, 4)}]
    loss = lambda pred, batch: torch.nn.functional.mse_loss(pred, batch["target"])  # noqa: E731
    Trainer(torch.nn.Conv2d(1, 1, 1), loss, device="cpu", progress=False).fit(data, 1)
    assert torch.get_num_threads() == 1
    Trainer(torch.nn.Conv2d(1, 1, 1), loss, device="cpu", progress=False, threads=2).fit(data, 1)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads"):
        Trainer(torch.nn.Conv2d(1, 1, 1), loss, device="cpu", threads=0)


def test_process_group_helpers_outside_torchrun(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert compute.init_distributed() is False
    assert (compute.world_size(), compute.rank(), compute.local_rank(), compute.is_main()) == (1, 0, 0, True)
    assert compute.is_distributed() is False
    compute.barrier()  # a no-op
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="torchrun"):
        compute.init_distributed()
