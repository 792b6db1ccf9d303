"""The label round trip on the device: the windows it asks labels for wait in its state
until the answers come (qcore.edge.pending, Device.answer, qcore device --requests/--answers)."""

from __future__ import annotations

import csv
import json
import typing
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest
from test_artifact import reforge

from qcore.cli import main
from qcore.device_config import LabelPolicy
from qcore.edge.artifact import (
    Artifact,
    artifact_sizes,
    decode_artifact,
    encode_artifact,
    save_artifact,
)
from qcore.edge.asking import LABEL_POLICIES, budget
from qcore.edge.asking import ask as ask_for
from qcore.edge.device import Device
from qcore.edge.head import HeadStats, batch_stats
from qcore.edge.infer import forward_features
from qcore.edge.signals import fit_novelty_threshold
from qcore.edge.state import load_state, save_state
from qcore.errors import QCoreError

N = 10  # windows per batch


@pytest.fixture(scope="module")
def known(tiny_model, tiny_xy) -> Artifact:
    """An artifact whose device is a streaming head on a fixed backbone (no flips, frozen
    BatchNorm, no guard), with the cloud's novelty threshold."""
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y)
    features = forward_features(art.model, X)[1]
    limit = fit_novelty_threshold(features, y, 3, 1e-3, seed=0)
    device = art.device.replace(
        head="slda", flip_steps=0, bn_mode="frozen", novelty_threshold=limit, reset_window=0
    )
    return replace(art, head=batch_stats(features, y, 3), device=device)


def stream(tiny_xy, n: int, seed: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` batches of ``N`` raw windows (noise added) and their true labels."""
    X, y = tiny_xy
    return B.stream_batches(X, y, n, batch=N, seed=seed)


def asking(art: Artifact, **settings) -> Device:
    cfg = art.device.replace(**{"ask_fraction": 0.3, **settings})
    return Device(art, cfg)


def assert_same_head(a: HeadStats, b: HeadStats) -> None:
    for name in ("count", "mean", "scatter"):
        diff = np.abs(getattr(a, name).astype(np.float64) - getattr(b, name)).max()
        assert diff <= 1e-5, (name, diff)


def test_the_policies_are_those_of_the_asking_module() -> None:
    assert typing.get_args(LabelPolicy) == LABEL_POLICIES


def test_answers_given_later_are_learnt_as_labels_in_their_batch(known, tiny_xy) -> None:
    data = stream(tiny_xy, 3)
    dev = asking(known)
    asked = []
    for k, (X, _) in enumerate(data):
        report = dev.step(X, batch_id=f"b{k}")
        assert len(report.ask) == budget(N, 0.3) and report.head_samples == 0
        asked.append(report.ask)
    assert dev.art.pending is not None and len(dev.art.pending) == 3 * budget(N, 0.3)
    # the windows wait as the model's input, exactly
    first = [j for j, (key, _) in enumerate(dev.art.pending.keys) if key == "b0"]
    want = dev.normalize(data[0][0])[asked[0]]
    np.testing.assert_array_equal(dev.art.pending.windows[first], want)
    # answered in another order than asked, in two calls, by name and by index
    answers = [(f"b{k}", i, int(data[k][1][i])) for k in (2, 0, 1) for i in asked[k]]
    names = [(b, i, B.CLASSES[c]) for b, i, c in answers[:4]]
    done = dev.answer(names)
    assert (done.learnt, done.new_classes, done.pending) == (4, [], len(answers) - 4)
    assert dev.answer(answers[4:]).pending == 0 and dev.art.pending is None
    labelled = Device(known)  # the same windows labelled in their batches
    for (X, y), ask in zip(data, asked, strict=True):
        part = np.full(N, -1)
        part[ask] = y[ask]
        labelled.step(X, part)
    assert labelled.art.head is not None and dev.art.head is not None
    assert_same_head(dev.art.head, labelled.art.head)
    everything = np.concatenate([X for X, _ in data])
    np.testing.assert_array_equal(dev.predict(everything), labelled.predict(everything))
    counts = dev.runtime.label_counts(known.class_names)
    assert counts == labelled.runtime.label_counts(known.class_names)
    assert sum(counts) == len(answers)


def test_an_answer_for_a_window_not_waiting_is_refused_and_changes_nothing(known, tiny_xy) -> None:
    (X, y), (X2, _) = stream(tiny_xy, 2)
    dev = asking(known)
    ask = dev.step(X, batch_id="b0").ask
    never = next(i for i in range(N) if i not in ask)
    good = ("b0", ask[0], int(y[ask[0]]))
    before = encode_artifact(dev.art)
    refused = {
        "waits for no answer: it was never asked": [good, ("b0", never, 0)],
        "batch 'b9' waits for no answer": [good, ("b9", ask[1], 0)],
        "is answered twice": [good, good],
        "has no label": [good, ("b0", ask[1], -1)],
        "neither class names": [good, ("b0", ask[1], 7)],
        "all class names .text. or all class indices": [good, ("b0", ask[1], "low")],
    }
    for message, answers in refused.items():
        with pytest.raises(QCoreError, match=message):
            dev.answer(answers)
        assert encode_artifact(dev.art) == before, message
    dev.answer([good])
    with pytest.raises(QCoreError, match="was answered already"):
        dev.answer([good])
    # a window asked for in a batch stepped without an id waits under the step number
    step2 = dev.step(X2)
    assert dev.answer([(2, step2.ask[0], "low")]).learnt == 1


def test_an_answer_may_teach_a_new_class(known, tiny_xy) -> None:
    X = stream(tiny_xy, 1)[0][0]
    dev = Device(known, known.device.replace(ask_fraction=0.3), allow_new_classes=True)
    ask = dev.step(X, batch_id="b0").ask
    done = dev.answer([("b0", ask[0], "jump"), ("b0", ask[1], "low")])
    assert (done.learnt, done.new_classes, done.pending) == (2, ["jump"], len(ask) - 2)
    assert dev.art.class_names == (*B.CLASSES, "jump") and dev.art.head is not None
    assert dev.art.head.count[3] == 1 and dev.runtime.labelled == {"jump": 1, "low": 1}


def test_ask_keep_bounds_the_windows_waiting_and_drops_the_oldest(known, tiny_xy) -> None:
    dev = asking(known, ask_fraction=0.5, ask_keep=7)
    for k, (X, _) in enumerate(stream(tiny_xy, 3)):
        dev.step(X, batch_id=f"b{k}")  # 5 windows asked each time, 15 in all
    pending = dev.art.pending
    assert pending is not None and len(pending) == 7
    assert [key for key, _ in pending.keys] == ["b1", "b1"] + ["b2"] * 5
    assert artifact_sizes(dev.art)["pending"] == pending.windows.nbytes == 7 * 3 * 32 * 4
    dropped = next(k for k in range(N) if ("b0", k) not in pending.keys)
    with pytest.raises(QCoreError, match="or was dropped .a device keeps the last 7"):
        dev.answer([("b0", dropped, 0)])
    smaller = Device(dev.art, dev.config.replace(ask_keep=3))  # --set ask_keep=3
    assert smaller.art.pending is not None and smaller.art.pending.keys == pending.keys[-3:]


def test_the_windows_waiting_survive_a_kill_and_are_answered_after_it(
    known, tiny_xy, tmp_path
) -> None:
    data = stream(tiny_xy, 2)
    dev = asking(known, ask_policy="random")
    for k, (X, _) in enumerate(data):
        dev.step(X, batch_id=f"b{k}")
    save_state(tmp_path / "state.qcore", dev.art)
    back = load_state(tmp_path / "state.qcore")
    assert back.pending is not None and dev.art.pending is not None
    assert back.pending.keys == dev.art.pending.keys
    np.testing.assert_array_equal(back.pending.windows, dev.art.pending.windows)
    answers = [(key, i, int(data[int(key[1])][1][i])) for key, i in dev.art.pending.keys]
    resumed = Device(back, back.device)
    resumed.answer(answers)
    dev.answer(answers)
    assert resumed.art.head is not None and dev.art.head is not None
    assert_same_head(resumed.art.head, dev.art.head)
    # a resumed device asks what an uninterrupted one would (random draws by step)
    X3 = stream(tiny_xy, 1, seed=9)[0][0]
    assert resumed.step(X3, batch_id="b2").ask == dev.step(X3, batch_id="b2").ask


def test_a_file_without_windows_waiting_loads_and_a_corrupt_part_is_refused(known, tiny_xy) -> None:
    plain = encode_artifact(known)
    assert b'"pending"' not in plain and decode_artifact(plain).pending is None
    dev = asking(known)
    dev.step(stream(tiny_xy, 1)[0][0], batch_id="b0")
    data = encode_artifact(dev.art)
    assert decode_artifact(data).pending is not None

    def bound(header: dict) -> None:
        header["device"]["ask_keep"] = 2

    def pair(header: dict) -> None:
        header["pending"][0] = ["b0"]

    def twice(header: dict) -> None:
        header["pending"][1] = header["pending"][0]

    def key(header: dict) -> None:
        header["pending"][0][0] = True

    cases = {
        bound: "3 windows wait for an answer, the device keeps at most 2 .ask_keep.",
        pair: "corrupt: header field 'pending' must list .batch key, window. pairs",
        twice: "inconsistent: a window waits twice",
        key: "inconsistent: a pending window's key must be",
    }
    for mutate, message in cases.items():
        with pytest.raises(QCoreError, match=message):
            decode_artifact(reforge(data, mutate))


def test_asking_needs_a_streaming_head_and_the_novel_policies_a_novelty(known) -> None:
    with pytest.raises(QCoreError, match="ask_fraction needs head=slda"):
        Device(known, known.device.replace(head="model", ask_fraction=0.1))
    bare = known.device.replace(novelty_threshold=None, ask_fraction=0.1)
    with pytest.raises(QCoreError, match="ask_policy novel-cover needs the novelty"):
        Device(known, bare.replace(ask_policy="novel-cover"))
    Device(known, bare)  # margin-cover needs none


def test_the_device_asks_among_the_windows_without_a_label_and_pseudo_labels_none(
    known, tiny_xy
) -> None:
    X, y = stream(tiny_xy, 1)[0]
    part = y.copy()
    part[: N - 2] = -1  # 2 windows labelled
    report = asking(known, ask_fraction=1.0).step(X, part)
    assert report.ask == list(range(N - 2))
    report = asking(known, pseudo_threshold=1e-9).step(X)
    assert report.pseudo_labels == N - len(report.ask) and report.ask
    assert asking(known, ask_fraction=None).step(X).ask == []


def test_dmargin_asks_for_the_open_windows_of_smallest_distance_margin(known, tiny_xy) -> None:
    X, y = stream(tiny_xy, 1)[0]
    part = y.copy()
    part[:5] = -1  # windows 5.. labelled: the device asks for 3 among 0-4
    for labels, open_ in ((None, range(N)), (part, range(5))):
        report = asking(known, ask_policy="dmargin").step(X, labels)
        assert report.margin is not None and len(report.ask) == budget(N, 0.3)
        assert set(report.ask) <= set(open_)
        rest = [report.margin[i] for i in open_ if i not in report.ask]
        assert max(report.margin[i] for i in report.ask) <= min(rest)


@pytest.mark.parametrize("policy", ["margin-dense", "margin-dense2"])
def test_a_density_policy_weighs_the_open_windows_by_their_whitened_features(
    known, tiny_xy, policy
) -> None:
    X, y = stream(tiny_xy, 1)[0]
    X = 3.0 * X  # a drifted batch: the head is unsure of every window, by different margins
    part = y.copy()
    part[:6] = -1  # windows 6.. labelled: the device asks for 3 among 0-5
    for labels, open_ in ((None, np.arange(N)), (part, np.arange(6))):
        device = asking(known, ask_policy=policy)
        sig = device.signals(X)
        assert sig.whitened is not None and sig.whitened.shape[0] == N
        k = budget(N, 0.3)
        want = open_[ask_for(policy, k, sig.probs[open_], None, whitened=sig.whitened[open_])]
        report = device.step(X, labels)
        assert report.ask == want.tolist() and len(want) == k
        if labels is None:  # not what margin alone asks for
            assert want.tolist() != ask_for("margin", k, sig.probs, None).tolist()


def test_only_a_density_policy_whitens(known, tiny_xy, monkeypatch) -> None:
    """The whitening (a Cholesky factor and a product per batch) is paid only by a device
    that asks by density: one asking by margin, or not asking, never computes it."""
    from qcore.edge import signals as signals_module

    def refused(*_):
        raise AssertionError("whitened although no density policy asks")

    X, _ = stream(tiny_xy, 1)[0]
    monkeypatch.setattr(signals_module, "whiten", refused)
    for device in (asking(known, ask_policy="margin"), Device(known)):
        assert len(device.step(X, None).predicted) == N
    with pytest.raises(AssertionError, match="no density policy"):
        asking(known, ask_policy="margin-dense").step(X, None)


def test_the_cli_round_trip(known, tiny_xy, tmp_path, capsys) -> None:
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    save_artifact(art_path, known)
    folder = tmp_path / "stream"
    folder.mkdir()
    data = stream(tiny_xy, 2)
    for k, (X, _) in enumerate(data):
        (folder / f"{k:03d}.npz").write_bytes(B.npz_bytes(X=X))  # no labels
    requests, answers = tmp_path / "requests.csv", tmp_path / "answers.csv"
    run = ["device", str(art_path), "--state", str(state)]
    ask = ["--stream", str(folder), "--set", "ask_fraction=0.4", "--requests", str(requests)]
    assert main([*run, *ask]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    header, *rows = list(csv.reader(requests.open()))
    assert tuple(header) == ("batch", "window", "file")
    for k, line in enumerate(lines):
        mine = [r for r in rows if r[2] == f"{k:03d}.npz"]
        assert [int(r[1]) for r in mine] == line["ask"] and len(line["ask"]) == 4
    # a labelling tool fills a label column into a copy; one window is still unlabelled
    with answers.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*header, "label"])
        for n, (batch, window, file) in enumerate(rows):
            label = B.CLASSES[data[int(file[:3])][1][int(window)]]
            out.writerow([batch, window, file, "" if n == 0 else label])
    assert main([*run, "--answers", str(answers)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "answers": str(answers), "learnt": 7, "new_classes": [], "pending": 1
    }  # fmt: skip
    assert json.loads(captured.err)["answered"] == 7
    learnt = load_state(state)
    labelled = Device(known)
    for k, (X, y) in enumerate(data):
        part = np.full(N, -1)
        ask = lines[k]["ask"][1:] if k == 0 else lines[k]["ask"]
        part[ask] = y[ask]
        labelled.step(X, part)
    assert learnt.head is not None and labelled.art.head is not None
    assert_same_head(learnt.head, labelled.art.head)
    before = state.read_bytes()
    assert main([*run, "--answers", str(answers)]) == 2  # answered already: all refused
    assert "qcore: error: window" in capsys.readouterr().err
    assert state.read_bytes() == before
    assert main(run) == 2
    assert "needs --stream DIR (or -), --answers FILE, or both" in capsys.readouterr().err
