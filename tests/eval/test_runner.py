"""A seeded end-to-end run on tiny synthetic data, through the library and the CLI."""

import itertools
import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from qcore.cli import main
from qcore.config import DeviceConfig, RunConfig
from qcore.edge.artifact import load_artifact
from qcore.errors import QCoreError
from qcore.eval.report import CALIBRATION
from qcore.eval.run_table import run_table
from qcore.eval.runner import run

TINY = dict(
    dataset="synthetic",
    source=0,
    target=1,
    filters=4,
    depth=3,
    epochs=3,
    bits=(2, 4),
    core_size=8,
    n_batches=4,
    record_every=1,
    calib_steps=3,
    source_calib_epochs=1,
)
TINY_QCORE = {**TINY, "device": DeviceConfig(flip_steps=2)}  # fewer flip passes: faster
# the novelty and the margin come from a streaming head only
HEAD_SIGNALS = ("target_auroc_novelty_before", "target_auroc_margin_before")
CALIBRATION_KEYS = tuple(k for k in CALIBRATION if k not in HEAD_SIGNALS)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``qcore ARGS`` in this process (the process boundary is not what these tests test):
    exit status, stdout, stderr. ``qcore run`` sets the process's thread counts, which
    change float results; they are restored so later tests see what they set."""
    torch_threads = torch.get_num_threads()
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:
        torch.set_num_threads(torch_threads)
        if blas:
            threadpool_limits(blas[0], user_api="blas")
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(**TINY_QCORE, method="none,backprop,qcore")
    return out, run(cfg, out)


def test_results_contract(result):
    out, res = result
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config"]["method"] == "none,backprop,qcore"
    rows = on_disk["results"]
    for r in rows:
        assert {"method", "bits", "source_acc", "target_acc", "device_bytes"} <= set(r)
    # every row's time says what it measured, in its unit
    times = {r["method"]: {k for k in r if k.endswith(("_s", "_ms"))} for r in rows}
    assert times["float"] == {"train_s"} and times["ptq"] == {"quantize_s"}
    assert times["backprop-source"] == {"calibrate_s"} and times["qcore"] == {"cloud_s", "step_ms"}
    assert "wall_s" in on_disk and all("seconds" not in r for r in rows)
    qrows = [r for r in rows if r["method"] == "qcore"]
    assert [r["bits"] for r in qrows] == [2, 4]
    for r in qrows:
        assert {"target_acc_before", "source_acc_before", "flipnet"} <= set(r)
        assert len(r["steps"]) == 4
        for s in r["steps"]:
            assert {"task_acc", "source_acc", "target_acc", "core_acc", "seconds"} <= set(s)
        assert r["step_ms"] == pytest.approx(1000 * np.mean([s["seconds"] for s in r["steps"]]))
    assert (out / "stream.png").stat().st_size > 1000
    assert (out / "reliability.png").stat().st_size > 1000
    n_test = {k: res["scenario"][f"n_{k}_test"] for k in ("source", "target")}
    for r in (r for r in rows if "steps" in r):
        for key in CALIBRATION_KEYS:
            assert 0.0 <= r[key] <= 1.0, (r["method"], key)
        assert all(r[k] is None for k in HEAD_SIGNALS)  # no streaming head: no novelty
        for name, suffix in itertools.product(("source", "target"), ("_before", "")):
            bins = r[f"{name}_reliability{suffix}"]
            assert sum(count for _, _, count in bins) == n_test[name]
            # the ECE is the count-weighted gap of the bins it reports
            gap = sum(count * abs(acc - conf) for conf, acc, count in bins) / n_test[name]
            assert r[f"{name}_ece{suffix}"] == pytest.approx(gap)
    by = {(r["method"], r["bits"]): r["device_bytes"] for r in rows}
    assert by[("ptq", 2)] < by[("ptq", 4)] < by[("float", None)]
    assert by[("qcore", 4)] > by[("none", 4)]  # core and flip network cost bytes


def _scenario(cfg: RunConfig):
    """The scenario (stream and test sets) the runner cuts for ``cfg``."""
    from qcore.data.registry import load_dataset
    from qcore.data.scenario import make_scenario

    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    return make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)


def test_calibration_is_that_of_the_shipped_and_of_the_final_device(result):
    """``*_ece_before`` and ``target_auroc_before`` are those of the device in
    ``deployed-*.qcore`` (what ships), ``*_ece`` those of ``calibrated-*.qcore`` (its state
    after the stream), recomputed from the device's own confidence; the two differ. The
    back-prop method's torch model before the stream is the deployed model of ``none``."""
    from qcore.edge.device import Device
    from qcore.eval.metrics import auroc, ece

    out, res = result
    sc = _scenario(RunConfig(**TINY_QCORE, method="none,backprop,qcore"))
    rows = {(r["method"], r["bits"]): r for r in res["results"]}
    for bits in (2, 4):
        row = rows[("qcore", bits)]
        shipped = load_artifact(out / f"deployed-{bits}bit.qcore")
        final = load_artifact(out / f"calibrated-{bits}bit.qcore")
        for suffix, device in (("_before", Device(shipped)), ("", Device(final, deployed=shipped))):
            for name, split in (("source", sc.source_test), ("target", sc.target_test)):
                right = device.predict(split.X, normalized=True) == split.y
                conf = device.signals(split.X, normalized=True).confidence
                want = ece(conf, right)
                assert row[f"{name}_ece{suffix}"] == pytest.approx(want), (bits, name, suffix)
                if (name, suffix) == ("target", "_before"):
                    assert row["target_auroc_before"] == pytest.approx(auroc(conf, right))
        assert row["target_ece_before"] != pytest.approx(row["target_ece"], abs=1e-6)
        none, backprop = rows[("none", bits)], rows[("backprop", bits)]
        for name in ("source", "target"):
            assert none[f"{name}_ece_before"] == none[f"{name}_ece"]  # never changes
            assert backprop[f"{name}_ece_before"] == pytest.approx(none[f"{name}_ece_before"])


def test_same_seed_same_numbers(result, tmp_path):
    """Same seed and inputs: the same numbers, and bit-identical weights and core after the
    simulated stream (``calibrated-*.qcore`` holds the final model, core and step)."""
    out, res = result
    again = run(RunConfig(**TINY_QCORE, method="none,backprop,qcore"), tmp_path)

    def strip(rows):
        return [
            {k: v for k, v in r.items() if not k.endswith(("_s", "_ms")) and k != "steps"}
            | {
                "steps": [
                    {k: v for k, v in s.items() if k != "seconds"} for s in r.get("steps", [])
                ]
            }
            for r in rows
        ]

    assert json.dumps(strip(res["results"])) == json.dumps(strip(again["results"]))
    files = sorted(p.name for p in out.glob("*.qcore"))
    assert files == [f"{k}-{b}bit.qcore" for k in ("calibrated", "deployed") for b in (2, 4)]
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name
    final, start = load_artifact(out / files[0]), load_artifact(out / files[2])
    assert final.step == 4 and start.step == 0
    assert len(final.core) == len(start.core)
    with np.load(out / "core.npz") as a, np.load(tmp_path / "core.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    cases = [
        (["run", "--out", str(tmp_path), "--set", "bits=9"], "bit-width 9"),
        (["run", "--out", str(tmp_path), "--set", "dataset=nope"], "nope"),
        (
            [
                "run",
                "--out",
                str(tmp_path),
                "--set",
                "method=magic",
                "--set",
                "dataset=synthetic",
                "--set",
                "source=0",
                "--set",
                "target=1",
            ],
            "unknown method",
        ),
        (["data", "info", "dsads", "--path", str(tmp_path / "missing")], "missing"),
        (["model", "info", "--channels", "0", "--classes", "3"], "n_channels"),
    ]
    for args, needle in cases:
        code, _, err = cli(capsys, *args)
        assert code != 0, args
        assert needle in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_cli_info_json(capsys):
    args = ["--channels", "6", "--classes", "6", "--filters", "16", "--depth", "3", "--json"]
    code, out, _ = cli(capsys, "model", "info", *args)
    assert code == 0 and json.loads(out)["n_params"] == 57_030
    code, out, _ = cli(capsys, "data", "info", "synthetic", "--json")
    info = json.loads(out)
    assert {"n_cases", "n_channels", "n_timepoints", "n_classes", "n_domains"} <= set(info)
    assert np.isfinite(info["n_cases"])


def test_help_lists_the_settings(capsys):
    for command, setting in (("run", "flip_teacher_lr"), ("device", "guard_margin")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert f"  {setting} = " in text and "  flip_guard = pass" in text


def test_export_then_device_end_to_end(result, tmp_path, capsys):
    from qcore.data.registry import load_dataset

    out, _ = result
    art = tmp_path / "model.qcore"
    code, stdout, err = cli(capsys, "export", str(out), "--bits", "4", "--out", str(art))
    assert code == 0, err
    assert json.loads(stdout)["total"] == art.stat().st_size
    code, _, err = cli(capsys, "export", str(out), "--bits", "8", "--out", str(art))
    assert code != 0 and "8" in err
    ds = load_dataset("synthetic")
    raw = ds.X[ds.domain == 1]
    labels = ds.y[ds.domain == 1]
    stream = tmp_path / "stream"
    stream.mkdir()
    for i in range(3):
        np.savez(stream / f"b{i}.npz", X=raw[i * 8 : (i + 1) * 8], y=labels[i * 8 : (i + 1) * 8])
    state = str(tmp_path / "state.qcore")
    code, stdout, err = cli(
        capsys, "device", str(art), "--stream", str(stream), "--state", state,
        "--set", "flip_guard=off", "--set", "guard_margin=1",
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert {"step", "accuracy", "latency_ms", "rss_bytes"} <= set(line)
    # the overrides are the state's device settings from now on
    saved = load_artifact(state).device
    assert saved.flip_guard == "off" and saved.guard_margin == 1.0
    assert load_artifact(art).device.flip_guard == "pass"


def test_a_bit_width_does_not_depend_on_the_others(result, tmp_path):
    """The bench runs one bit-width per cell: its rows must equal those of a joint run."""
    _, res = result
    alone = run(RunConfig(**{**TINY_QCORE, "bits": (4,)}, method="none,backprop,qcore"), tmp_path)

    def rows(r):
        return {
            (x["method"], x["bits"]): (x["target_acc"], x["source_acc"], x["device_bytes"])
            for x in r["results"]
            if x["bits"] == 4
        }

    assert rows(alone) == rows(res) and len(rows(res)) == 5


def test_a_rerun_reuses_the_trained_model(tmp_path, monkeypatch):
    """The float model and its dynamics are cached by the settings that determine them:
    a rerun that adds a bit-width trains nothing and gives the same numbers."""
    from qcore.cloud import pipeline

    calls = []
    real = pipeline.train_model
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = RunConfig(**{**TINY_QCORE, "bits": (4,)}, method="none,qcore")
    first = run(cfg, tmp_path)
    assert len(calls) == 1 and first["results"][0]["cached"] is False
    again = run(cfg.replace(bits=(2, 4)), tmp_path)
    assert len(calls) == 1 and again["results"][0]["cached"] is True

    def rows(r, bits):
        return [(x["method"], x["target_acc"], x["source_acc"]) for x in r["results"]
                if x["bits"] == bits]  # fmt: skip

    assert rows(again, 4) == rows(first, 4)
    run(cfg, tmp_path, cache=False)  # --no-cache
    assert len(calls) == 2
    # a setting that changes training misses the cache
    run(cfg.replace(epochs=2), tmp_path)
    assert len(calls) == 3


def test_progress_says_what_runs(tmp_path, capsys):
    cfg = RunConfig(**{**TINY_QCORE, "bits": (4,)}, method="qcore")
    run(cfg, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "flip network: teacher rounds" in err and "qcore, 4 bits" in err


def test_few_labels_reach_the_methods_and_accuracy_counts_every_window(tmp_path):
    """label_fraction: a seeded share of each batch keeps its labels; a method that takes
    -1 labels gets them (the slda device adds only the labelled windows to its head), one
    that does not gets the labelled windows alone; task accuracy is on every window."""
    from qcore.data.scenario import label_mask

    cfg = RunConfig(**{**TINY, "bits": (4,)}, method="none,slda,finetune", label_fraction=0.25)
    res = run(cfg, tmp_path / "few")
    rows = {r["method"]: r for r in res["results"] if "steps" in r}
    n = res["scenario"]["batch_size"]
    want = [int(label_mask(n, 0.25, cfg.seed, s).sum()) for s in range(1, cfg.n_batches + 1)]
    assert want[0] == round(0.25 * n) and 0 < want[0] < n
    for row in rows.values():
        assert [s["labelled"] for s in row["steps"]] == want
    assert [s["head_samples"] for s in rows["slda"]["steps"]] == want
    full = run(cfg.replace(label_fraction=1.0), tmp_path / "full")
    none_full = next(r for r in full["results"] if r["method"] == "none")
    # the deployed model never changes: the same accuracies whatever reaches the device
    assert [s["task_acc"] for s in rows["none"]["steps"]] == [
        s["task_acc"] for s in none_full["steps"]
    ]
    blind = run(cfg.replace(label_fraction=0.0, method="slda,finetune"), tmp_path / "none")
    for row in (r for r in blind["results"] if "steps" in r):
        assert all(s["labelled"] == 0 for s in row["steps"])
        assert row["target_acc"] == row["steps"][0]["target_acc"]  # nothing moved


def test_a_class_held_out_of_the_cloud_is_learnt_on_the_device(tmp_path):
    from qcore.edge.artifact import load_artifact

    cfg = RunConfig(**{**TINY, "bits": (4,)}, method="none,slda,backprop", new_classes="class3")
    res = run(cfg, tmp_path)
    rows = {r["method"]: r for r in res["results"] if "steps" in r}
    deployed = load_artifact(tmp_path / "deployed-4bit.qcore")
    assert deployed.class_names == ("class0", "class1", "class2")  # the cloud never saw it
    assert deployed.model.n_classes == 3
    calibrated = load_artifact(tmp_path / "calibrated-4bit.qcore")
    assert calibrated.class_names == ("class0", "class1", "class2", "class3")
    assert calibrated.head.count[3] == rows["slda"]["steps"][-1]["new_seen"] > 0
    assert all(s["new_recall"] == 0.0 for s in rows["none"]["steps"])  # cannot name it
    assert rows["slda"]["new_recall"] > 0.5
    assert rows["backprop"]["new_recall"] > 0  # its head grew a row and learnt it
    for row in rows.values():  # the confidence of the method inside the class translation
        assert row["target_ece_before"] is not None and row["target_ece"] is not None
    seen = [s["new_seen"] for s in rows["slda"]["steps"]]
    assert seen == sorted(seen) and rows["slda"]["windows_to_recall"] in [*seen, None]
    with pytest.raises(QCoreError, match="cannot learn a class the cloud never saw"):
        run(cfg.replace(method="bn-stats"), tmp_path / "bn")
    with pytest.raises(QCoreError, match="neither a class name"):
        run(cfg.replace(new_classes="class9"), tmp_path / "bad")


def _strict(text: str) -> dict:
    """``json.loads`` that refuses NaN and infinities (not JSON, though Python writes them)."""

    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_results_json_is_strict_json(result):
    """A value that could not be measured (``none`` has no core: ``core_acc``) is null."""
    out, _ = result
    on_disk = _strict((out / "results.json").read_text())
    none = next(r for r in on_disk["results"] if r["method"] == "none")
    assert all(s["core_acc"] is None for s in none["steps"])


def test_before_is_what_the_method_ships(tmp_path):
    """``*_before`` is measured on the method's own device before the first batch: with no
    label reaching the device nothing moves, so before equals after (the streaming head of
    ``slda`` predicts otherwise than the deployed model's head, and its novelty tells
    right from wrong; the deployed model's softmax has no novelty)."""
    cfg = RunConfig(**{**TINY, "bits": (4,)}, method="none,slda", label_fraction=0.0)
    rows = {r["method"]: r for r in run(cfg, tmp_path)["results"]}
    for m in ("none", "slda"):
        for key in ("acc", "ece", "reliability"):
            assert rows[m][f"target_{key}_before"] == rows[m][f"target_{key}"], (m, key)
            assert rows[m][f"source_{key}_before"] == rows[m][f"source_{key}"], (m, key)
    assert all(rows["none"][k] is None for k in HEAD_SIGNALS)
    # the shipped slda device's novelty (a smaller one goes with a right prediction) and
    # distance margin (a larger one does)
    from qcore.edge.device import Device
    from qcore.eval.metrics import auroc

    device = Device(load_artifact(tmp_path / "deployed-4bit.qcore"))
    test = _scenario(cfg).target_test
    sig = device.signals(test.X, normalized=True)
    right = device.predict(test.X, normalized=True) == test.y
    assert rows["slda"]["target_auroc_novelty_before"] == pytest.approx(auroc(-sig.novelty, right))
    assert rows["slda"]["target_auroc_margin_before"] == pytest.approx(auroc(sig.margin, right))
    assert rows["slda"]["target_ece_before"] != rows["none"]["target_ece_before"]
    assert rows["none"]["target_acc_before"] == rows["backprop-source"]["target_acc"]


def test_a_run_adding_methods_trains_nothing(tmp_path, monkeypatch):
    """The cache holds the training dynamics and the deployed model of each bit-width: a
    run adding ``backprop`` (which starts from the QCore) after a default-style run trains
    and calibrates nothing, and gives the first run's rows."""
    from qcore.cloud import pipeline

    cfg = RunConfig(**{**TINY, "bits": (4,)}, method="slda")
    first = run(cfg, tmp_path)
    with np.load(tmp_path / "core.npz") as npz:  # recorded, not used: as without a cache
        assert (npz["train_scores"] == 1).all()

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(pipeline, "train_model", refuse)
    monkeypatch.setattr(pipeline, "calibrate_on_source", refuse)
    again = run(cfg.replace(method="slda,backprop"), tmp_path)
    assert again["results"][0]["cached"] and again["results"][2]["cached"]
    with np.load(tmp_path / "core.npz") as npz:  # backprop starts from the QCore
        assert len(np.unique(npz["train_scores"])) > 1
    keys = ("method", "bits", "target_acc", "source_acc", "target_acc_before")
    rows = [[tuple(r.get(k) for k in keys) for r in res["results"][:4]] for res in (first, again)]
    assert rows[0] == rows[1]


def test_cache_keys_are_resolved(tmp_path, monkeypatch):
    """``new_classes`` names the same held-out class by name or index: one cache entry."""
    from qcore.cloud import pipeline

    cfg = RunConfig(**{**TINY, "bits": (4,), "epochs": 1}, method="none", new_classes="class3")
    run(cfg, tmp_path)
    calls = []
    real = pipeline.train_model
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run(cfg.replace(new_classes="3,class3"), tmp_path)
    assert again["results"][0]["cached"] and not calls
    run(cfg.replace(new_classes="class2"), tmp_path)  # another class: another model
    assert len(calls) == 1


def test_the_run_table_names_what_each_number_measured(tmp_path, capsys):
    """``qcore run`` prints before/after accuracies, device milliseconds per step apart
    from the cloud's seconds, and the label fraction and new-class results when used."""
    sets = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    args = ["run", "--out", str(tmp_path), "--quiet", *(x for s in sets for x in ("--set", s))]
    code, out, _ = cli(capsys, *args, "--set", "bits=4", "--set", "method=none,slda",
                       "--set", "threads=1")  # fmt: skip
    assert code == 0
    head, *lines = out.splitlines()
    names = head.split()
    assert names == ["method", "bits", "target_before", "target_after", "source_before",
                     "source_after", "target_ece_before", "target_ece_after", "step_ms",
                     "cloud_s", "device_bytes"]  # fmt: skip
    res = json.loads((tmp_path / "results.json").read_text())
    table = {line.split()[0]: dict(zip(names, line.split(), strict=True)) for line in lines[:5]}
    slda = next(r for r in res["results"] if r["method"] == "slda")
    assert table["slda"]["step_ms"] == f"{slda['step_ms']:.2f}"
    assert table["slda"]["target_before"] == f"{slda['target_acc_before']:.3f}"
    assert table["slda"]["target_ece_before"] == f"{slda['target_ece_before']:.3f}"
    assert table["slda"]["target_ece_after"] == f"{slda['target_ece']:.3f}"
    assert table["ptq"]["target_ece_after"] == "-"  # the cloud's models: no confidence
    assert table["float"]["cloud_s"] == f"{res['results'][0]['train_s']:.1f}"
    assert table["float"]["target_before"] == "-" and table["ptq"]["step_ms"] == "-"
    few = {**res, "config": {**res["config"], "label_fraction": 0.5}}
    few["results"] = [*res["results"][:3], {**slda, "old_acc": 0.5, "new_recall": 0.25,
                                           "windows_to_recall": None}]  # fmt: skip
    out = run_table(few)
    names = out.splitlines()[0].split()
    assert names[-4:] == ["label_fraction", "old_acc", "new_recall", "windows_to_recall"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:5]}
    assert rows["float"][-4:] == ["-"] * 4
    assert rows["slda"][-4:] == ["0.500", "0.500", "0.250", "-"]
