"""Each cached stage's key covers every setting it reads, and no other (imc.pipeline)."""

from __future__ import annotations

import copy

import pytest

from imc import config, pipeline
from imc.cache import config_hash

CACHED = ("orientation", "features", "retrieval", "matching", "verification")
FROM_FEATURES = {"features", "retrieval", "matching", "verification"}
# Written out by hand, from what each stage's code reads: a changed setting recomputes the
# stages that read it and those downstream of them; the orientation stage extracts ALIKED
# features and matches them with LightGlue, so it reads those models' settings too.
EXPECTED = {
    "images": {"orientation"} | FROM_FEATURES,
    "orientation": {"orientation"},
    "features.model": {"orientation"} | FROM_FEATURES,
    "features.detection_threshold": {"orientation"} | FROM_FEATURES,
    "features.nms_radius": {"orientation"} | FROM_FEATURES,
    "features": FROM_FEATURES,
    "retrieval": {"retrieval", "matching", "verification"},
    "matching": {"orientation", "matching", "verification"},
    "matching.sift_ratio": {"matching", "verification"},  # SIFT is not in orientation
    "verification": {"verification"},
    "clustering": set(),  # clustering and mapping are not cached
    "mapping": set(),
    "runtime": set(),
}


def leaves(conf: dict) -> list[str]:
    """Dotted names of every setting (mapping.options counts as one)."""
    return [f"{section}.{key}" for section, values in conf.items() for key in values]


def changed(value):
    """Another valid-looking value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return value + [0.75]
    if isinstance(value, dict):
        return {**value, "some_option": 1}
    return "other"  # None


def expected(name: str) -> set[str]:
    return EXPECTED.get(name, EXPECTED[name.split(".")[0]])


def keys(conf: dict) -> dict[str, str]:
    source = [[["a.png", 10, 0]], "cpu"]
    return {
        stage: config_hash(key)
        for stage, key in pipeline.stage_keys(conf, source, {"a.png": 0}).items()
    }


@pytest.mark.parametrize("name", leaves(config.DEFAULTS))
def test_a_changed_setting_recomputes_exactly_the_stages_that_read_it(name):
    base = config.resolve()
    conf = copy.deepcopy(base)
    section, key = name.split(".")
    conf[section][key] = changed(conf[section][key])
    before, after = keys(base), keys(conf)
    assert set(before) == set(CACHED)
    assert {s for s in CACHED if before[s] != after[s]} == expected(name)


def test_every_setting_is_classified():
    """A new setting must be placed in EXPECTED (by section at least) and in STAGE_READS."""
    sections = {name.split(".")[0] for name in leaves(config.DEFAULTS)}
    assert sections <= set(EXPECTED)


def test_rotations_and_inputs_reach_the_features_and_what_follows():
    source = [[["a.png", 10, 0]], "cpu"]
    conf = config.resolve()
    a = pipeline.stage_keys(conf, source, {"a.png": 0})
    b = pipeline.stage_keys(conf, source, {"a.png": 1})
    assert a["orientation"] == b["orientation"]
    assert all(a[s] != b[s] for s in FROM_FEATURES)
    other_file = [[["a.png", 11, 0]], "cpu"]  # the image changed on disk
    c = pipeline.stage_keys(conf, other_file, {"a.png": 0})
    assert all(a[s] != c[s] for s in CACHED)
    on_gpu = pipeline.stage_keys(conf, [[["a.png", 10, 0]], "cuda"], {"a.png": 0})
    assert all(a[s] != on_gpu[s] for s in CACHED)
    assert pipeline.stage_keys(conf, source, None).keys() == {"orientation"}
