"""Baselines users compare QCore against: one method per file, each a Calibrator.

Importing this package registers every baseline in :mod:`qcore.eval.methods`:
``bn-stats``, ``finetune``, ``joint``, ``random-core-bp``, ``random-core-flip``, ``er``,
``derpp``, ``gdumb``, ``camel`` and ``zo-spsa``. ``common`` (NumPy) and ``torch_common``
hold what several of them share.
"""

from qcore.baselines import (  # noqa: F401  (each import registers one method)
    bn_stats,
    camel,
    derpp,
    er,
    finetune,
    gdumb,
    joint,
    random_core_bp,
    random_core_flip,
    zo_spsa,
)
