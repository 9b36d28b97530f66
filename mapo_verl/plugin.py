"""veRL plugin entry point: registers MAPO's names in veRL when ``verl`` is imported.

veRL swallows plugin import errors at debug level, which would leave a user with
"Unknown trainer 'mapo'" and no reason; this module logs the real error loudly first.
"""

import logging

logger = logging.getLogger("mapo_verl")

try:
    from mapo_verl.demo import register_resolver
    from mapo_verl.verl_ext.registration import register_all

    register_all()
    # the (inert) ${mapo_demo:...} config resolver of the embedded demo, so the demo recipes compose anywhere
    register_resolver()
except Exception:  # pragma: no cover - exercised only on a broken install
    logger.exception("mapo_verl: registering MAPO in veRL failed; MAPO names will be unavailable")
    raise
