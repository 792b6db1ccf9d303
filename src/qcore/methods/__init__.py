"""Every method the runner streams: one method per file, each a Calibrator.

Importing :mod:`qcore.methods.all` registers them in
:data:`qcore.methods.registry.METHODS`: the
deployed model as is (``none``), QCore's device step (``qcore``), the back-prop
reference (``backprop``), and the baselines users compare against (``bn-stats``,
``finetune``, ``joint``, ``random-core-bp``, ``random-core-flip``, ``er``, ``derpp``,
``gdumb``, ``camel``, ``zo-spsa``). ``common`` (NumPy) and ``torch_common`` hold what
several of them share.
"""
