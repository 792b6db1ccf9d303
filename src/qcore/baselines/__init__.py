"""Baselines users compare QCore against: one method per file, each a Calibrator.

Importing this package registers every baseline in :mod:`qcore.eval.methods`.
"""
