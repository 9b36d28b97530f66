"""Version-pinned adaptations of veRL (installed as ``mapo_verl.patches``).

Each patch targets exactly the veRL version in :data:`TESTED_VERL_VERSION` and refuses
to apply to any other, with an error that says so: a monkey-patch on an untested
version is a silent wrong result waiting to happen.
"""

from __future__ import annotations

TESTED_VERL_VERSION = "0.9.1"


class UnsupportedVerlVersionError(RuntimeError):
    """The installed veRL is not the version these patches were written against."""


def require_tested_verl() -> None:
    """Raise :class:`UnsupportedVerlVersionError` unless veRL is :data:`TESTED_VERL_VERSION`."""
    import verl

    if verl.__version__ != TESTED_VERL_VERSION:
        raise UnsupportedVerlVersionError(
            f"mapo_verl's patches are pinned to verl=={TESTED_VERL_VERSION}, found verl=={verl.__version__}; "
            f"install verl=={TESTED_VERL_VERSION} (pip install 'mapo-verl' pins it)"
        )
