"""Command-line flags of the bundle configs."""

from __future__ import annotations

import pytest

from unet_med.bundle.flags import as_bool


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("true", True),
        ("TRUE", True),
        (1, True),
        (0, False),
        ("yes", True),
    ],
)
def test_flags_read_as_the_user_means_them(value, expected):
    assert as_bool(value) is expected


def test_other_values_are_refused_with_the_flag_name():
    with pytest.raises(ValueError, match=r"^amp must be true or false, got 'maybe'\.$"):
        as_bool("maybe", "amp")
