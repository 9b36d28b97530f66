"""mapo_verl: MAPO (Modality-Aware Policy Optimization) for veRL.

``mapo_verl.core`` is pure torch. Everything that touches veRL lives in
``mapo_verl.verl_ext`` and is registered by :mod:`mapo_verl.plugin`, which veRL loads
through its ``verl.plugins`` entry point (or ``VERL_USE_EXTERNAL_MODULES=mapo_verl``).
Importing this package alone never imports veRL: when veRL is already being imported
(the ``VERL_USE_EXTERNAL_MODULES`` route), the registration runs here.
"""

import sys

from mapo_verl import _import_order

__version__ = "0.1.0"

_import_order.install()  # veRL is imported before the first MAPO module that needs it, never inside one

if "verl" in sys.modules:
    from mapo_verl import plugin  # noqa: F401  (registers MAPO's names in veRL)
