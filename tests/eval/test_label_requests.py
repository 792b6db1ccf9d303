"""label_policy: which windows of each stream batch carry a label, chosen once per run and
bit-width (by a seeded draw, or by the streaming-head device asking) and handed to every
method of the run; the grid's policy dimension and the labels table."""

from __future__ import annotations

import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qcore.config import LABEL_POLICIES, LabelPolicy, RunConfig
from qcore.core.types import Batch
from qcore.data.scenario import label_mask
from qcore.edge.asking import LABEL_POLICIES as ASKING_POLICIES
from qcore.edge.asking import ask, budget
from qcore.errors import QCoreError
from qcore.eval import label_requests, runner
from qcore.eval.grid import cell_dir, make_grid
from qcore.eval.label_tables import kept_shares, labels_markdown, policy_rows

TINY = dict(
    dataset="synthetic",
    source=0,
    target=1,
    filters=4,
    depth=3,
    epochs=1,
    bits=(2,),
    core_size=8,
    n_batches=4,
    record_every=1,
    calib_steps=1,
    source_calib_epochs=1,
    threads=1,
    method="none,slda,finetune",  # finetune: a back-prop baseline, given labelled windows alone
    label_fraction=0.1,
)
CHOSEN = "margin-cover"


def _scenario(cfg: RunConfig):
    from qcore.data.registry import load_dataset
    from qcore.data.scenario import make_scenario

    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    return make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny run with random and with the chosen policy (one trained model), and the
    masks each method was streamed with, by method."""
    out = tmp_path_factory.mktemp("asked")
    real = runner.stream
    got: dict[str, dict[str, list[np.ndarray]]] = {}

    def spy(*args, **kwargs):
        got[policy][kwargs["label"].split(",")[0]] = kwargs["masks"]
        return real(*args, **kwargs)

    res = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "stream", spy)
        for policy in ("random", CHOSEN):
            got[policy] = {}
            cfg = RunConfig(**TINY, label_policy=policy)
            res[policy] = runner.run(cfg, out / policy, cache=out / ".cache")
    return out, res, got


def _streamed(result: dict) -> dict[str, dict]:
    return {r["method"]: r for r in result["results"] if "steps" in r}


def test_the_policies_are_the_askers():
    assert LABEL_POLICIES == ASKING_POLICIES == typing.get_args(LabelPolicy)
    assert RunConfig(label_policy="novel").label_policy == "novel"
    with pytest.raises(QCoreError, match="label_policy"):
        RunConfig(label_policy="loudest")


def test_random_gives_todays_masks_to_every_method(runs):
    """label_policy=random: the seeded draw of label_mask, step by step, for every method."""
    _, res, got = runs
    cfg = RunConfig(**TINY, label_policy="random")
    stream = _scenario(cfg).stream
    want = [label_mask(len(b), cfg.label_fraction, cfg.seed, i + 1) for i, b in enumerate(stream)]
    assert set(got["random"]) == {"none", "slda", "finetune"}
    for masks in got["random"].values():
        assert len(masks) == len(want)
        assert all(np.array_equal(m, w) for m, w in zip(masks, want, strict=True))
    rows = _streamed(res["random"])
    assert [s["head_samples"] for s in rows["slda"]["steps"]] == [int(w.sum()) for w in want]
    unseen = label_requests.classes_never_labelled(stream, want)
    for row in rows.values():
        assert row["label_policy"] == "random"
        assert row["classes_never_labelled"] == unseen


def test_a_chosen_policy_gives_every_method_the_masks_the_shipped_device_asks(runs):
    """Another policy: one set of masks per bit-width, the same for every method (back-prop
    too), within the budget at each step, asked by the slda device the run ships, before it
    steps on each batch, then learning from those labels."""
    from qcore.edge.artifact import load_artifact
    from qcore.methods.qcore_method import DeviceCalibrator

    out, res, got = runs
    cfg = RunConfig(**TINY, label_policy=CHOSEN)
    stream = _scenario(cfg).stream
    masks = got[CHOSEN]["slda"]
    for method in ("none", "finetune"):
        assert all(np.array_equal(a, b) for a, b in zip(got[CHOSEN][method], masks, strict=True))
    assert [int(m.sum()) for m in masks] == [budget(len(b), cfg.label_fraction) for b in stream]
    assert any(not np.array_equal(m, r) for m, r in zip(masks, got["random"]["slda"], strict=True))
    rows = _streamed(res[CHOSEN])
    for row in rows.values():
        assert [s["labelled"] for s in row["steps"]] == [int(m.sum()) for m in masks]
        assert row["label_policy"] == CHOSEN
        assert row["classes_never_labelled"] == label_requests.classes_never_labelled(stream, masks)
    assert [s["head_samples"] for s in rows["slda"]["steps"]] == [int(m.sum()) for m in masks]
    shipped = load_artifact(out / CHOSEN / "deployed-2bit.qcore")
    first = DeviceCalibrator(shipped).device.signals(stream[0].X, normalized=True)
    k = budget(len(stream[0]), cfg.label_fraction)
    asked = ask(CHOSEN, k, first.probs, first.novelty, np.zeros(first.probs.shape[1]))
    assert np.flatnonzero(masks[0]).tolist() == asked.tolist()
    again = label_requests.requested_masks(
        DeviceCalibrator(shipped), stream, CHOSEN, cfg.label_fraction, cfg.seed
    )
    assert all(np.array_equal(a, b) for a, b in zip(again, masks, strict=True))


class _Stub:
    """A device with classes a, b, c whose calibrated probabilities are the same on every
    batch: window 0 (class a) is the one it is least sure of, then 3 (a), 1 (b), 2 (c);
    by its distance margin, 2 then 3, 1, 0; in its whitened features window 0 lies far
    from the three others."""

    label_names = ("a", "b", "c")

    def __init__(self) -> None:
        self.art = SimpleNamespace(class_names=self.label_names)
        probs = np.array([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
        apart = np.array([3.0, 2.0, 0.5, 1.0])
        white = np.array([[10.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
        self.device = SimpleNamespace(signals=lambda X, normalized: SimpleNamespace(
            probs=probs, novelty=np.zeros(len(X)), margin=apart, whitened=white))  # fmt: skip
        self.given: list[list[int]] = []

    def observe(self, batch: Batch) -> None:
        self.given.append(batch.y.tolist())


def test_cover_asks_for_a_class_without_labels_before_a_labelled_one():
    """One label per batch: margin always asks for the least sure window (class a); with
    -cover, once a has its label, the next batches ask about b, then c, which have none;
    the device is given the asked label alone."""
    y = np.array([0, 1, 2, 0])
    stream = [Batch(np.zeros((4, 1, 2), dtype=np.float32), y) for _ in range(3)]
    plain = label_requests.requested_masks(_Stub(), stream, "margin", 0.25, 0)
    assert [np.flatnonzero(m).tolist() for m in plain] == [[0], [0], [0]]
    stub = _Stub()
    cover = label_requests.requested_masks(stub, stream, "margin-cover", 0.25, 0)
    assert [np.flatnonzero(m).tolist() for m in cover] == [[0], [1], [2]]
    assert stub.given == [[0, -1, -1, -1], [-1, 1, -1, -1], [-1, -1, 2, -1]]
    assert label_requests.classes_never_labelled(stream, plain) == 2
    assert label_requests.classes_never_labelled(stream, cover) == 0


def test_dmargin_asks_by_the_reference_device_s_distance_margin():
    stream = [Batch(np.zeros((4, 1, 2), dtype=np.float32), np.array([0, 1, 2, 0]))] * 2
    stub = _Stub()
    masks = label_requests.requested_masks(stub, stream, "dmargin", 0.5, 0)
    assert [np.flatnonzero(m).tolist() for m in masks] == [[2, 3], [2, 3]]
    assert stub.given == [[-1, -1, 2, 0]] * 2


def test_margin_dense_asks_by_the_reference_device_s_whitened_features():
    """One label per batch: margin asks for window 0, the least sure; the density policies
    for window 3, the least sure of the three windows that lie together."""
    stream = [Batch(np.zeros((4, 1, 2), dtype=np.float32), np.array([0, 1, 2, 0]))] * 2
    for policy in ("margin-dense", "margin-dense2"):
        stub = _Stub()
        masks = label_requests.requested_masks(stub, stream, policy, 0.25, 0)
        assert [np.flatnonzero(m).tolist() for m in masks] == [[3], [3]]
        assert stub.given == [[-1, -1, -1, 0]] * 2
    plain = label_requests.requested_masks(_Stub(), stream, "margin", 0.25, 0)
    assert [np.flatnonzero(m).tolist() for m in plain] == [[0], [0]]


def test_the_grid_runs_each_policy_where_it_chooses(monkeypatch):
    monkeypatch.setattr("qcore.eval.grid._uschad_found", lambda: False)
    preset = make_grid("labels")
    assert preset.label_policies == tuple(dict.fromkeys(("random", RunConfig().label_policy)))
    grid = make_grid(
        "labels",
        ["label_fractions=1,0.1,0", "label_policies=random,margin-cover", "seeds=0", "bits=4"],
    )
    cells = grid.cells()
    assert len(cells) == len(grid.pairs) * 4  # 1 and 0 once, 0.1 per policy
    got = {(c.label_fraction, c.label_policy) for c in cells}
    assert got == {(1.0, "random"), (0.1, "random"), (0.1, "margin-cover"), (0.0, "random")}
    pair = [c for c in cells if (c.dataset, c.source, c.target) == ("hapt", 1, 4)]
    names = sorted(cell_dir(Path("out"), c).name for c in pair)
    assert names == [
        "hapt-1-4-s0-b4",
        "hapt-1-4-s0-b4-l0",
        "hapt-1-4-s0-b4-l0.1",
        "hapt-1-4-s0-b4-l0.1-pmargin-cover",
    ]
    with pytest.raises(QCoreError, match="label_policy"):
        make_grid("labels", ["label_policies=random,loudest"])


def test_results_without_a_policy_were_drawn_at_random():
    stored = RunConfig(label_fraction=0.1, label_policy="random").to_dict()
    del stored["label_policy"]
    assert RunConfig(label_fraction=0.1, label_policy="random").made_with(stored)
    assert not RunConfig(label_fraction=0.1, label_policy="margin").made_with(stored)
    full = RunConfig().to_dict()
    del full["label_policy"]
    assert RunConfig(label_policy="novel-cover").made_with(full)  # nothing chosen at 1


def _row(seed, method, fraction, policy, target):
    return {
        "dataset": "d", "scenario": "1->2", "bits": 4, "seed": seed, "base_method": method,
        "label_fraction": fraction, "label_policy": policy, "target_acc": target,
        "source_acc": 0.9, "classes_never_labelled": 0,
    }  # fmt: skip


def test_the_labels_table_has_a_row_per_policy_and_the_gain_each_keeps():
    """Rows at fractions 1 and 0 serve every policy; a cell whose full-label gain is under
    0.02 keeps no share."""
    rows = []
    for seed, full in ((0, 0.9), (1, 0.51)):  # seed 1: a full-label gain of 0.01
        rows += [_row(seed, "none", f, "random", 0.5) for f in (1.0, 0.1, 0.0)]
        rows += [_row(seed, "none", 0.1, "margin", 0.5)]
        rows += [_row(seed, "slda", 1.0, "random", full), _row(seed, "slda", 0.0, "random", 0.5)]
        rows += [_row(seed, "slda", 0.1, "random", 0.6), _row(seed, "slda", 0.1, "margin", 0.8)]
    by_policy = {p: kept_shares(policy_rows(rows, p), "slda") for p in ("random", "margin")}
    margin = (0.8 - 0.5) / (0.9 - 0.5)
    assert by_policy["random"][0.1] == [pytest.approx((0.6 - 0.5) / (0.9 - 0.5))]
    assert by_policy["margin"][0.1] == [pytest.approx(margin)]
    text = labels_markdown(rows)
    assert "| slda | margin |" in text and "| slda | random |" in text
    assert "| slda: gain kept | margin |" in text
    assert f"| slda | margin | 0.1 | {100 * margin:.0f}% | 1 |" in text
