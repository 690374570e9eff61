import json
import logging
from pathlib import Path

import cv2
import numpy as np
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


# ----------------------------------------------------------------------------- values


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    """A CPU machine unless a test says otherwise: resolve() then gives the defaults."""
    monkeypatch.setattr(config, "cuda_available", lambda: False)


def test_every_key_has_an_expectation():
    assert set(config.EXPECT) == set(config.DEFAULTS)
    for section, values in config.DEFAULTS.items():
        assert set(config.EXPECT[section]) == set(values), section


def test_registry_names_match_the_stages():
    from imc.stages import features, matching, verification

    assert config.FEATURE_MODELS == tuple(features.MODELS)
    assert config.MATCHER_MODELS == tuple(matching.MODELS)
    assert config.VERIFICATION_METHODS == tuple(verification.METHODS)


def test_defaults_and_every_preset_pass():
    assert config.check(config.DEFAULTS) == config.DEFAULTS
    for name in config.PRESETS:
        conf = config.resolve(name)
        assert conf["runtime"]["preset"] == name
        assert config.check(conf) == conf


@pytest.mark.parametrize(
    "override, shown, expected",
    [
        ("features.max_keypoints=abc", "'abc'", "an integer >= 0"),
        ("features.max_keypoints=2.5", "2.5", "an integer >= 0"),
        ("features.max_keypoints=true", "True", "an integer >= 0"),
        ("features.max_keypoints=-1", "-1", "an integer >= 0"),
        ("verification.max_iters=0", "0", "an integer >= 1"),
        ("runtime.seed=-3", "-3", "an integer >= 0"),
        ("orientation.enabled=1", "1", "true or false"),
        ("orientation.enabled=yes", "'yes'", "true or false"),
        ("verification.threshold=0", "0", "a number > 0"),
        ("verification.threshold=fast", "'fast'", "a number > 0"),
        ("verification.confidence=1.5", "1.5", "a number in [0, 1]"),
        ("verification.confidence=NaN", "nan", "a number in [0, 1]"),
        ("matching.filter_threshold=false", "False", "a number in [0, 1]"),
        ("matching.depth_confidence=2", "2", "a number in [-1, 1]"),
        ("runtime.device=gpu", "'gpu'", "one of 'auto', 'cpu', 'cuda', 'cuda:K'"),
        ("runtime.device=cuda:x", "'cuda:x'", "one of 'auto', 'cpu', 'cuda', 'cuda:K'"),
        ("mapping.mapper=colmap", "'colmap'", "one of 'incremental', 'global'"),
        ("mapping.camera_mode=1", "1", "one of 'auto', 'per_image', 'shared'"),
        ("retrieval.model=netvlad", "'netvlad'", "one of 'dinov2', 'aliked'"),
        ("features.model=superpoint", "'superpoint'", "one of 'aliked-n16'"),
        ("matching.model=superglue", "'superglue'", "one of 'lightglue-aliked'"),
        ("verification.method=8pt", "'8pt'", "one of 'magsac', 'ransac', 'lmeds'"),
        ("retrieval.dinov2_dir=3", "3", "null or a folder path (a string)"),
        ('retrieval.dinov2_dir=""', "''", "null or a folder path (a string)"),
        ("retrieval.min_similarity=2", "2", "null or a number in [-1, 1]"),
        ("retrieval.min_similarity=high", "'high'", "null or a number in [-1, 1]"),
        ("mapping.global_min_relative_inliers=[]", "[]", "a number in [0, 1] or a non-empty"),
        ("mapping.global_min_relative_inliers=[0.2,2]", "[0.2, 2]", "a number in [0, 1] or"),
        ("mapping.global_min_relative_inliers=x", "'x'", "a number in [0, 1] or"),
        ("runtime.preset=turbo", "'turbo'", "null or one of 'cpu', 'gpu', 'fast'"),
    ],
)
def test_a_wrong_value_names_key_value_and_expectation(override, shown, expected):
    key = override.split("=")[0]
    with pytest.raises(ImcError) as e:
        config.resolve(overrides=[override])
    message = str(e.value)
    assert message.startswith(f"configuration value {key}={shown}: expected {expected}")
    assert "\n" not in message


def test_the_message_in_full_and_from_a_file(tmp_path):
    with pytest.raises(ImcError) as e:
        config.resolve(overrides=["features.max_keypoints=abc"])
    assert str(e.value) == (
        "configuration value features.max_keypoints='abc': expected an integer >= 0"
    )
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"preset": "gpu", "config": {"clustering": {"min_size": 0}}}))
    with pytest.raises(ImcError, match=r"clustering\.min_size=0: expected an integer >= 1"):
        config.resolve(file=path)
    with pytest.raises(ImcError, match=r"max_keypoints=\{'x': 1\}: expected an integer"):
        config.resolve(overrides=["features.max_keypoints.x=1"])  # a section where a value goes
    with pytest.raises(ImcError, match=r"runtime\.workers=1\.5"):
        config.check(config.merge(config.DEFAULTS, {"runtime": {"workers": 1.5}}))
    with pytest.raises(ImcError, match=r"mapping\.options=3: expected a mapping"):
        config.check({"mapping": {"options": 3}})


def test_good_values_are_kept_and_normalised():
    conf = config.resolve(
        overrides=[
            "features.max_keypoints=1024.0",  # an integral float is an integer
            "verification.threshold=2",  # an integer is a number
            "runtime.device=cuda:1",
            "retrieval.dinov2_dir=/models/dinov2",
            "mapping.global_min_relative_inliers=0.3",
            "matching.depth_confidence=-1",  # LightGlue's 'off'
            "mapping.options.anything=goes",  # the mapping stage checks these
        ]
    )
    assert conf["features"]["max_keypoints"] == 1024
    assert isinstance(conf["features"]["max_keypoints"], int)
    assert conf["verification"]["threshold"] == 2.0
    assert isinstance(conf["verification"]["threshold"], float)
    assert conf["runtime"]["device"] == "cuda:1"
    assert conf["retrieval"]["dinov2_dir"] == "/models/dinov2"
    assert conf["mapping"]["global_min_relative_inliers"] == 0.3
    assert conf["mapping"]["options"] == {"anything": "goes"}
    listed = config.resolve(overrides=["mapping.global_min_relative_inliers=[0, 1]"])
    assert listed["mapping"]["global_min_relative_inliers"] == [0.0, 1.0]


def test_a_wrong_value_fails_before_cuda_is_looked_at(monkeypatch):
    def fail():
        raise AssertionError("CUDA looked at")

    monkeypatch.setattr(config, "cuda_available", fail)
    with pytest.raises(ImcError, match="max_keypoints"):
        config.resolve(overrides=["features.max_keypoints=abc"])


# ----------------------------------------------------------------------------- device


def test_gpu_preset_chosen_when_cuda_is_found(monkeypatch, caplog):
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    monkeypatch.setattr(config.logger, "propagate", True)  # the CLI's logging turns it off
    with caplog.at_level(logging.INFO, logger="imc"):
        conf = config.resolve()
    assert "preset gpu chosen: CUDA device found" in caplog.text
    assert conf == config.resolve("gpu")
    assert conf["runtime"]["preset"] == "gpu"
    assert conf["features"]["max_keypoints"] == config.PRESETS["gpu"]["features"]["max_keypoints"]
    over = config.resolve(overrides=["features.max_keypoints=100"])
    assert over["runtime"]["preset"] == "gpu" and over["features"]["max_keypoints"] == 100
    assert config.resolve("cpu")["runtime"]["preset"] == "cpu"  # a preset named: no choice
    assert config.resolve("cpu")["features"] == config.DEFAULTS["features"]
    on_cpu = config.resolve(overrides=["runtime.device=cpu"])
    assert on_cpu["runtime"]["preset"] is None and on_cpu["features"] == config.DEFAULTS["features"]


def test_no_preset_without_cuda():
    conf = config.resolve()
    assert conf["runtime"]["preset"] is None and conf == config.DEFAULTS


def test_a_written_configuration_keeps_its_preset(monkeypatch, tmp_path):
    on_cpu = config.resolve()  # runtime.preset None
    config.dump(on_cpu, tmp_path / "cpu.json")
    gpu = config.resolve("gpu", overrides=["verification.threshold=2.5"])
    config.dump(gpu, tmp_path / "gpu.json")
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    assert config.resolve(file=tmp_path / "cpu.json") == on_cpu  # not turned into gpu
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert config.resolve(file=tmp_path / "gpu.json") == gpu
    assert config.resolve(overrides=["runtime.preset=fast"]) == config.resolve("fast")


# ----------------------------------------------------------------------------- CLI


def _tiny_competition(root: Path) -> Path:
    """An IMC2025 test layout of one dataset and two images."""
    (root / "test" / "toy").mkdir(parents=True)
    rows = ["image_id,dataset,scene,image,rotation_matrix,translation_vector"]
    for i in range(2):
        cv2.imwrite(str(root / "test" / "toy" / f"im{i}.png"), np.zeros((8, 8, 3), np.uint8))
        rows.append(f"toy_{i},toy,cluster0,im{i}.png,{';'.join(['nan'] * 9)},nan;nan;nan")
    (root / "sample_submission.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cli_rejects_a_wrong_value_in_one_line_before_running(tmp_path, capsys):
    from imc import formats
    from imc.cli import main

    data = _tiny_competition(tmp_path / "comp")
    assert formats.read_competition(data).num_images == 2  # a valid folder: the value fails
    run_dir = tmp_path / "run"
    argv = ["run", str(data), "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache")]
    capsys.readouterr()  # what the check above logged
    code = main([*argv, "--set", "features.max_keypoints=abc"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "imc: error: configuration value features.max_keypoints='abc': expected an integer >= 0"
    ]
    assert "Traceback" not in err
    assert not run_dir.exists() and not (tmp_path / "cache").exists()
