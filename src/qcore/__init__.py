"""qcore: continual, on-device calibration of low-bit quantized sensor classifiers.

Importing the package does nothing but define names; the PyTorch side lives in
``qcore.cloud`` and is only imported where it is used, so ``qcore.edge``,
``qcore.core``, ``qcore.data`` and ``qcore.coreset`` run without PyTorch.
"""

from qcore.errors import QCoreError

__all__ = ["QCoreError", "__version__"]
__version__ = "0.1.0"
