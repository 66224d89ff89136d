"""Profiles: quick is the default everywhere, study and full are opt-in, bad names fail clearly."""
import pytest

from rtlearn import config


def test_quick_is_the_default_even_with_cuda(monkeypatch):
    monkeypatch.delenv("RTLEARN_PROFILE", raising=False)
    assert config.profile() == "quick"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU runtime with the variable unset
    assert config.profile() == "quick"
    monkeypatch.setenv("RTLEARN_PROFILE", "  ")
    assert config.profile() == "quick"


@pytest.mark.parametrize("value, expected", [("full", "full"), ("Quick", "quick"), ("STUDY", "study")])
def test_profile_switch(monkeypatch, value, expected):
    monkeypatch.setenv("RTLEARN_PROFILE", value)
    assert config.profile() == expected
    assert config.pick(1, 3, study=2) == {"quick": 1, "study": 2, "full": 3}[expected]


def test_pick_with_an_explicit_profile_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "full")
    assert config.pick(1, 3, study=2, profile_name="quick") == 1
    assert config.pick(1, 3, study=2, profile_name="study") == 2


def test_study_size_is_never_guessed():
    with pytest.raises(ValueError, match="study"):
        config.pick(1, 3, profile_name="study")


@pytest.mark.parametrize("bad", ["fast", "", 3, None, "quick,full"])
def test_bad_profile_names(monkeypatch, bad):
    with pytest.raises(ValueError, match="not a profile"):
        config.check_profile(bad)
    if isinstance(bad, str) and bad:
        monkeypatch.setenv("RTLEARN_PROFILE", bad)
        with pytest.raises(ValueError, match="RTLEARN_PROFILE"):
            config.profile()


def test_check_overrides_names_the_unknown_fields():
    import dataclasses

    from rtlearn.config import check_overrides

    @dataclasses.dataclass
    class C:
        epochs: int = 1
        lr: float = 0.1

    check_overrides(C, {"epochs": 3})
    check_overrides(C, {})
    with pytest.raises(ValueError, match=r"unknown Config field\(s\) \['epoch', 'rate'\]; the fields are \['epochs', 'lr'\]"):
        check_overrides(C, {"epoch": 3, "rate": 1, "lr": 0.2})
    with pytest.raises(ValueError, match="unknown baseline settings"):
        check_overrides(C, {"x": 1}, "baseline settings")
