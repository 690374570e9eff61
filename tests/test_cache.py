import h5py
import pytest

from imc import cache


def test_stage_dir_is_keyed_by_configuration(tmp_path):
    a = cache.stage_dir(tmp_path, "features", {"max_keypoints": 1024})
    b = cache.stage_dir(tmp_path, "features", {"max_keypoints": 2048})
    assert a != b and a.name.startswith("features-")
    assert cache.stage_dir(tmp_path, "features", {"max_keypoints": 1024}) == a
    assert (a / "conf.json").read_text().count("1024") == 1


def test_resumable_h5_renames_only_when_complete(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(RuntimeError), cache.resumable_h5(path) as f:
        g = f.create_group("a.png")
        g.attrs["done"] = True
        f.create_group("b.png")  # not done: a crash mid-image
        raise RuntimeError("killed")
    assert not path.exists() and path.with_name("features.h5.partial").exists()
    with cache.resumable_h5(path) as f:
        assert cache.done_keys(f) == {"a.png"}
        f["b.png"].attrs["done"] = True
    assert path.exists() and not path.with_name("features.h5.partial").exists()
    with h5py.File(path) as f:
        assert cache.done_keys(f) == {"a.png", "b.png"}


def test_unreadable_partial_is_discarded(tmp_path):
    path = tmp_path / "m.h5"
    path.with_name("m.h5.partial").write_bytes(b"garbage, not hdf5")
    with cache.resumable_h5(path) as f:
        assert len(f) == 0
    assert path.exists()


def test_pair_keys_escape_folders():
    assert cache.pair_key("x/a.png", "b.png") == "x-SL-a.png/b.png"
    assert cache.h5_name(cache.h5_key("d/s/images/1.png")) == "d/s/images/1.png"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_has_the_mode_of_any_other_file(tmp_path, umask):
    """Not mkstemp's 0600: 0o666 less the umask, as open() gives a file written in place."""
    import os
    import stat

    old = os.umask(umask)
    try:
        cache.atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "b.txt").write_text("plain open()")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode)
    assert (tmp_path / "a.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]  # no temporary
