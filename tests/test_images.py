import numpy as np
import pytest
from PIL import Image

from imc import images


def test_modes_become_rgb8(tmp_path):
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert np.array_equal(images.read_image(tmp_path / "rgb.png"), rgb)
    gray = images.read_image(tmp_path / "gray.png")
    assert gray.shape == (20, 30, 3) and np.array_equal(gray[..., 2], rgb[..., 0])
    assert np.array_equal(images.read_image(tmp_path / "rgba.png"), rgb)
    g16 = images.read_image(tmp_path / "g16.png")
    assert g16.dtype == np.uint8 and np.abs(g16[..., 0].astype(int) - rgb[..., 0]).max() <= 1


def test_exif_orientation_is_ignored_unless_asked(tmp_path):
    arr = np.zeros((10, 40, 3), np.uint8)
    arr[:, :5] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert images.read_image(tmp_path / "r.jpg").shape == (10, 40, 3)
    assert images.read_image(tmp_path / "r.jpg", apply_exif=True).shape == (40, 10, 3)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad image.png"
    path.write_bytes(content)
    with pytest.raises(images.ImageReadError, match="bad image.png"):
        images.read_image(path)


def test_resize_and_point_conventions():
    img = np.zeros((300, 400, 3), np.uint8)
    small, scale = images.resize_long_side(img, 200)
    assert small.shape == (150, 200, 3) and np.allclose(scale, 0.5)
    same, s1 = images.resize_long_side(img, 1000)
    assert same is img and np.allclose(s1, 1)
    # centre of the resized top-left pixel maps to the centre of the original 2x2 block
    assert np.allclose(images.rescale_points(np.array([[0.0, 0.0]]), scale), [[0.5, 0.5]])


def test_small_images_are_upscaled_to_min_long_side_and_never_past_long_side():
    img = np.zeros((300, 400, 3), np.uint8)
    big, scale = images.resize_long_side(img, 1000, min_long_side=800)
    assert big.shape == (600, 800, 3) and np.allclose(scale, 2)
    capped, scale = images.resize_long_side(img, 600, min_long_side=800)
    assert capped.shape == (450, 600, 3) and np.allclose(scale, 1.5)
    same, s1 = images.resize_long_side(img, 1000, min_long_side=400)  # already that large
    assert same is img and np.allclose(s1, 1)
    down, s2 = images.resize_long_side(img, 200, min_long_side=800)  # larger than long_side
    assert down.shape == (150, 200, 3) and np.allclose(s2, 0.5)
    # the centre of the upscaled top-left pixel maps to a quarter of the original one
    assert np.allclose(
        images.rescale_points(np.array([[0.0, 0.0]]), np.array([2.0, 2.0])), [[-0.25, -0.25]]
    )


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_unrotate_points_inverts_rotate(k):
    img = np.arange(5 * 7).reshape(5, 7)
    rot = images.rotate(img, k)
    ys, xs = np.mgrid[: rot.shape[0], : rot.shape[1]]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    back = images.unrotate_points(pts, k, (7, 5)).round().astype(int)
    assert np.array_equal(img[back[:, 1], back[:, 0]], rot[ys.ravel(), xs.ravel()])
