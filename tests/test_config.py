import json

import pytest

from imc import config
from imc.errors import ImcError


def test_defaults_and_presets_resolve():
    conf = config.resolve()
    assert conf == config.DEFAULTS
    fast = config.resolve("fast")
    assert fast["features"]["max_keypoints"] == config.PRESETS["fast"]["features"]["max_keypoints"]
    assert fast["verification"] == config.DEFAULTS["verification"]


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ImcError, match=r"features\.max_kpts.*max_keypoints"):
        config.merge(config.DEFAULTS, {"features": {"max_kpts": 3}})
    with pytest.raises(ImcError, match="unknown configuration key 'nope'"):
        config.merge(config.DEFAULTS, {"nope": {}})
    with pytest.raises(ImcError, match="unknown preset"):
        config.resolve("turbo")


def test_overrides_are_parsed_as_json():
    out = config.parse_overrides(
        [
            "features.max_keypoints=1024",
            "mapping.mapper=global",
            "mapping.options.init_min_tri_angle=8.5",
        ]
    )
    assert out == {
        "features": {"max_keypoints": 1024},
        "mapping": {"mapper": "global", "options": {"init_min_tri_angle": 8.5}},
    }
    conf = config.resolve(overrides=["mapping.options.init_min_tri_angle=8.5"])
    assert conf["mapping"]["options"] == {"init_min_tri_angle": 8.5}


def test_config_file_round_trip(tmp_path):
    conf = config.resolve("fast", overrides=["verification.threshold=2.5"])
    path = tmp_path / "best.json"
    config.dump(conf, path)
    assert config.resolve(file=path) == conf
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ImcError, match="not valid JSON"):
        config.resolve(file=tmp_path / "bad.json")
    (tmp_path / "preset.json").write_text(json.dumps({"preset": "fast"}))
    assert config.resolve(file=tmp_path / "preset.json") == config.resolve("fast")
