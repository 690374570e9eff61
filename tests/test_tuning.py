"""`imc tune`: the search space, pair subsets, and a small real study on the demo scene.

The study test checks what makes trials trustworthy: two trials with equal parameters score
equally (mapping on one thread with a fixed seed) and give bitwise equal poses, and the best
configuration, run by `imc run --config best_config.json`, scores what its trial scored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from imc import config, formats, scoring
from imc.cli import main as imc_main
from imc.errors import ImcError
from imc.stages import mapping
from imc.submission import predictions_from_frame, read_submission
from tuning import space as space_mod
from tuning.cli import choose_datasets
from tuning.prepare import Prepared
from tuning.report import leave_one_out, loo_markdown, mask_password, verdict

WALL = ["wall_00.png", "wall_01.png", "wall_03.png", "wall_04.png", "wall_06.png", "outlier_00.png"]
BOXES = ["boxes_00.png", "boxes_01.png", "boxes_02.png", "boxes_04.png", "boxes_05.png"]
SMALL = ["orientation.enabled=false", "features.resize_long_side=480", "features.max_keypoints=512"]
BASE = ["--preset", "fast"] + [x for s in SMALL for x in ("--set", s)]
SEARCHED = "verification.threshold,mapping.options.init_min_num_inliers"


# ----------------------------------------------------------------------------- helpers


def small_competition(root: Path, datasets: dict[str, list[str]]) -> Path:
    """An IMC2025 train folder with some demo images per dataset (`wall`, `boxes`)."""
    from imc.demo import make_demo

    demo = make_demo(root / "demo")
    out = root / "small"
    rows = (demo / "train_labels.csv").read_text().splitlines()
    thresholds = (demo / "train_thresholds.csv").read_text().splitlines()
    labels, ths = [rows[0]], [thresholds[0]]
    for name, images in datasets.items():
        (out / "train" / name).mkdir(parents=True, exist_ok=True)
        for row in rows[1:]:
            _, scene, image, *rest = row.split(",")
            if image in images:
                labels.append(",".join([name, scene, image, *rest]))
                shutil.copy(demo / "train" / "demo" / image, out / "train" / name / image)
        scenes = {r.split(",")[1] for r in labels[1:] if r.startswith(f"{name},")}
        for row in thresholds[1:]:
            _, scene, values = row.split(",")
            if scene in scenes:
                ths.append(f"{name},{scene},{values}")
    (out / "train_labels.csv").write_text("\n".join(labels) + "\n")
    (out / "train_thresholds.csv").write_text("\n".join(ths) + "\n")
    return out


def upper(p: space_mod.Param):
    if p.kind == "choice":
        return p.choices[-1]
    return int(p.high) if p.kind == "int" else p.high


def tune_args(data: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "tune", str(data), *BASE, "--cache-dir", str(tmp / "cache"),
        "--output", str(tmp / "out"), "--params", SEARCHED, *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- space


def test_defaults_are_inside_the_space_and_valid_pycolmap_options():
    conf = config.resolve()
    defaults = space_mod.defaults(conf, space_mod.SPACE)
    assert defaults["verification.threshold"] == 1.0  # imc's default
    assert defaults["mapping.options.init_min_num_inliers"] == 100  # pycolmap's default
    assert defaults["mapping.min_model_size"] == 3
    outside = [p.name for p in space_mod.SPACE if not p.contains(defaults[p.name])]
    assert outside == []
    # every searched option at its upper bound reaches pycolmap's options
    top = {p.name: upper(p) for p in space_mod.SPACE}
    conf = space_mod.apply(conf, top)
    options = mapping.pipeline_options(conf["mapping"], 1, 0)
    assert options.mapper.init_min_num_inliers == 200
    assert options.mapper.filter_max_reproj_error == 8.0
    assert options.ba_refine_principal_point is True
    assert options.min_model_size == 10 and options.max_num_models == 50
    assert options.mapper.random_seed == 0 and options.num_threads == 1


def test_narrowing_by_name_suffix_range_and_file(tmp_path):
    space = space_mod.narrow(["threshold", "init_min_num_inliers", "confidence"], ranges={
        "verification.threshold": "0.5:2", "init_min_num_inliers": [20, 40],
        "confidence": "0.999|0.9999",
    })  # fmt: skip
    by = {p.name: p for p in space}
    assert list(by) == [
        "verification.threshold",
        "verification.confidence",
        "mapping.options.init_min_num_inliers",
    ]
    assert (by["verification.threshold"].low, by["verification.threshold"].high) == (0.5, 2.0)
    assert by["mapping.options.init_min_num_inliers"].high == 40
    assert by["verification.confidence"].choices == (0.999, 0.9999)
    assert len(space_mod.narrow(exclude=["threshold"])) == len(space_mod.SPACE) - 1
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"params": ["min_inliers"], "ranges": {"min_inliers": [10, 30]}}))
    spec = space_mod.load_space_file(f)
    (p,) = space_mod.narrow(spec["params"], ranges=spec["ranges"])
    assert (p.name, p.low, p.high, p.kind) == ("verification.min_inliers", 10, 30, "int")
    with pytest.raises(ImcError, match="unknown"):
        space_mod.narrow(["no_such_option"])
    with pytest.raises(ImcError, match="integers"):
        space_mod.narrow(["min_inliers"], ranges={"min_inliers": "1.5:3"})
    with pytest.raises(ImcError, match="not searched"):
        space_mod.narrow(["min_inliers"], ranges={"threshold": "1:2"})


def test_trial_parameters_are_a_config_override():
    params = {"verification.threshold": 2.5, "mapping.options.init_max_error": 3.0}
    assert space_mod.to_override(params) == {
        "verification": {"threshold": 2.5},
        "mapping": {"options": {"init_max_error": 3.0}},
    }
    conf = space_mod.apply(config.resolve(), params)
    assert conf["verification"]["threshold"] == 2.5
    assert conf["mapping"]["options"] == {"init_max_error": 3.0}
    with pytest.raises(ImcError, match="unknown configuration key"):
        space_mod.apply(config.resolve(), {"verification.thresh": 1.0})
    # the same nesting as `imc run --set` (one function: imc.config.nested)
    items = [f"{k}={v}" for k, v in params.items()]
    assert config.parse_overrides(items) == space_mod.to_override(params)


def test_pairs_of_fewer_neighbours_are_a_subset_of_the_cached_ones():
    rng = np.random.default_rng(0)
    names = [f"im{i:02d}.png" for i in range(45)]
    desc = (1.0 + 0.5 * rng.normal(size=(45, 16))).astype(np.float32)  # cosines ~0.8
    prep = Prepared(None, names[:-1], Path("."), {}, {}, {}, names, desc, Path("."))
    # no global.h5 names the descriptor here, so the floor is given (all cosines pass it)
    retrieval = {**config.DEFAULTS["retrieval"], "min_similarity": 0.2}
    largest = set(prep.pairs({**retrieval, "num_neighbors": 16}))
    for k in (4, 8, 12):
        sub = prep.pairs({**retrieval, "num_neighbors": k})
        assert set(sub) <= largest and len(sub) < len(largest)
        assert all(names[-1] not in p for p in sub)  # an unreadable image has no pair
    small = prep.pairs({**retrieval, "num_neighbors": 4, "exhaustive_below": 50})
    assert len(small) == 44 * 43 // 2  # below exhaustive_below: every pair


def test_dataset_split_and_honest_verdict():
    names = ["ETs", "templeRing", "dinoSparseRing", "fountain"]
    assert choose_datasets(names, None) == (["ETs", "templeRing"], ["dinoSparseRing", "fountain"])
    assert choose_datasets(names, "ETs") == (["templeRing", "dinoSparseRing", "fountain"], ["ETs"])
    assert choose_datasets(["demo"], None) == (["demo"], [])
    with pytest.raises(ImcError, match="not among"):
        choose_datasets(names, "nope")
    with pytest.raises(ImcError, match="every dataset"):
        choose_datasets(["fountain"], None)
    sc = {
        "defaults": {"tuning": {"a": 50.0}, "holdout": {"b": 40.0}},
        "best": {"tuning": {"a": 60.0}, "holdout": {"b": 35.0}},
    }
    assert "does NOT improve" in verdict(sc) and "-5.00" in verdict(sc)
    assert mask_password("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"


# ----------------------------------------------------------------------------- a real study


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A module folder: the small competition and the cache both tests share."""
    work = tmp_path_factory.mktemp("tune")
    small_competition(work, {"wall": WALL, "boxes": BOXES})
    return work


def test_leave_one_dataset_out_chooses_on_the_others_and_scores_the_one_left_out():
    """Trial 1 is best on A and B, trial 2 on all three (thanks to C, where 1 is poor), trial 3
    lacks C (pruned) and takes no part; trial 4 ties with trial 2 and loses to its lower
    number."""
    scores = {
        0: {"A": 50, "B": 50, "C": 50},
        1: {"A": 90, "B": 80, "C": 5},
        2: {"A": 40, "B": 40, "C": 100},
        3: {"A": 100, "B": 100},
        4: {"A": 40, "B": 40, "C": 100},
    }
    loo = leave_one_out(scores, ["A", "B", "C"])
    assert loo["trials"] == 4 and loo["in_sample_trial"] == 2  # mean 60 against 58.3
    rows = loo["datasets"]
    assert (rows["A"]["chosen_trial"], rows["A"]["held_out"]) == (2, 40)  # on B, C: 70
    assert (rows["B"]["chosen_trial"], rows["B"]["held_out"]) == (2, 40)
    assert (rows["C"]["chosen_trial"], rows["C"]["held_out"]) == (1, 5)  # on A, B: 85
    assert [r["in_sample"] for r in rows.values()] == [40, 40, 100]
    assert loo["held_out_mean"] == pytest.approx(85 / 3)
    assert loo["in_sample_mean"] == pytest.approx(60)
    text = "\n".join(loo_markdown(loo))
    assert "| C | 1 | 5.00 | 100.00 |" in text and "+31.67 points" in text
    assert leave_one_out(scores, ["A", "B"]) is None  # too few datasets to leave one out
    assert leave_one_out({3: scores[3]}, ["A", "B", "C"]) is None
    assert loo_markdown(None) == []


def test_study_is_deterministic_and_its_best_config_reproduces_in_imc_run(work, tmp_path):
    small = work / "small"
    equal = {"verification.threshold": 2.0, "mapping.options.init_min_num_inliers": 30}
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="t", direction="maximize")
    study.enqueue_trial(equal)
    study.enqueue_trial(equal)
    args = tune_args(small, work, "--storage", storage, "--study-name", "t", "--seed", "0")
    assert imc_main([*args, "--holdout", "boxes", "--n-trials", "3"]) == 0

    study = optuna.load_study(study_name="t", storage=storage)
    t0, t1, t2 = study.trials
    assert t0.params == t1.params == equal
    assert t0.state == t1.state == optuna.trial.TrialState.COMPLETE
    assert t0.value == t1.value and t0.user_attrs["details"] == t1.user_attrs["details"]
    assert t0.user_attrs["details"]["wall"]["registered"] >= 4  # a real reconstruction
    assert list(t0.user_attrs["scores"]) == ["wall"]  # the held-out dataset never in a trial
    assert t2.params != equal

    out = work / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]["best"]["holdout"]) == {"boxes"}
    assert summary["scores"]["defaults"]["tuning"]["wall"] >= 0
    report = (out / "report.md").read_text()
    assert "| boxes | holdout |" in report and "optuna-dashboard sqlite:///" in report
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"

    # the best configuration, run by `imc run`, scores what its trial scored
    best = max(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    conf = config.resolve(file=out / "best_config.json")
    assert conf["verification"]["threshold"] == best.params["verification.threshold"]
    run = tmp_path / "run"
    args = ["run", str(small), "--datasets", "wall", "--config", str(out / "best_config.json")]
    args.append("--no-score")
    assert imc_main([*args, "--cache-dir", str(work / "cache"), "--run-dir", str(run)]) == 0
    comp = formats.read_competition(small, split="train", datasets=["wall"])
    frame = read_submission(run / "submission.csv", comp.year)
    assert scoring.score(comp, frame).score == pytest.approx(best.value, abs=1e-9)


def test_equal_parameters_give_bitwise_equal_poses(work):
    from tuning import prepare
    from tuning.objective import evaluate_dataset, trial_conf

    conf = config.resolve("fast", overrides=SMALL)
    comp = formats.read_competition(work / "small", split="train", datasets=["wall"])
    prepared = prepare.prepare(comp, prepare.prep_conf(conf, 0), work / "cache", ["wall"])
    c = trial_conf(conf, {"verification.threshold": 1.5, "mapping.options.init_max_error": 2.0})
    a = evaluate_dataset(comp, prepared["wall"], c)
    b = evaluate_dataset(comp, prepared["wall"], c)
    assert a.registered >= 4 and a.predictions.keys() == b.predictions.keys()
    for name, p in a.predictions.items():
        q = b.predictions[name]
        assert p.cluster == q.cluster
        assert np.array_equal(p.R, q.R) and np.array_equal(p.t, q.t)


def test_a_trial_of_the_base_configuration_is_the_imc_run_of_it(work):
    """The preparing run is `imc run` with the base configuration (all pairs: exhaustive);
    a trial of the base configuration must give its poses exactly."""
    from tuning import prepare
    from tuning.objective import evaluate_dataset, trial_conf

    conf = config.resolve("fast", overrides=SMALL)
    comp = formats.read_competition(work / "small", split="train", datasets=["wall"])
    prep = prepare.prepare(comp, prepare.prep_conf(conf, 0), work / "cache", ["wall"])["wall"]
    frame = read_submission(prep.run_dir / "submission.csv", comp.year)
    ran = {im: p for (_, im), p in predictions_from_frame(comp, frame).items()}
    trial = evaluate_dataset(comp, prep, trial_conf(conf, {}))
    assert trial.registered >= 4
    assert {n for n, p in ran.items() if p.registered} == set(trial.predictions)
    for name, p in trial.predictions.items():
        assert p.cluster == ran[name].cluster
        assert np.array_equal(p.R, ran[name].R) and np.array_equal(p.t, ran[name].t)
