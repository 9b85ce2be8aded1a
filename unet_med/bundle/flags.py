"""Values that bundle configs take from the command line."""

from __future__ import annotations

from unet_med.bundle.errors import BundleError

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


def as_bool(value: bool | int | str, name: str = "flag") -> bool:
    """A config flag as a ``bool``, whether it comes from YAML or from a command-line override.

    ``python -m monai.bundle run --amp false`` passes the string ``"false"``, which Python would take for true;
    this reads it as ``False``.

    Args:
        value: a ``bool``, 0 or 1, or one of ``true``/``yes``/``1`` and ``false``/``no``/``0`` in any case.
        name: the flag's name, for the error message.

    Returns:
        The flag's truth value.

    Raises:
        BundleError: if ``value`` is none of the above (a ``ValueError``).
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BundleError(f"{name} must be true or false, got {value!r}.")
