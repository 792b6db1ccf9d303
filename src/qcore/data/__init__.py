"""Datasets (real HAR benchmarks, user npz files, synthetic) and cross-domain scenarios."""

from qcore.data.dataset import Dataset
from qcore.data.registry import DATASETS, load_dataset
from qcore.data.scenario import Normalizer, Scenario, Split, make_scenario
from qcore.data.synthetic import make_synthetic
from qcore.data.windowing import sliding_windows, window_labels

__all__ = [
    "DATASETS",
    "Dataset",
    "Normalizer",
    "Scenario",
    "Split",
    "load_dataset",
    "make_scenario",
    "make_synthetic",
    "sliding_windows",
    "window_labels",
]
