"""rtlearn._validate.check_int: the one integer check of the package."""
import numpy as np
import pytest

from rtlearn._validate import check_int


def test_check_int_accepts_integers_and_returns_int():
    assert check_int(3, "n") == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_int(0, "seed", 0) == 0 and check_int(2, "n_plans", 2) == 2


@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, True, "3", None, np.float64(3.0)])
def test_check_int_rejects_with_the_name_and_bound(value):
    with pytest.raises(ValueError, match=r"^epochs must be an integer >= 1, got "):
        check_int(value, "epochs")
