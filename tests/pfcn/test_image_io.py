"""read_image turns every kind of image file into upright 8-bit RGB; list_images expands inputs predictably."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcn.image_io import ImageReadError, list_images, pil_to_rgb, read_image

ORIENTATION = 0x0112  # EXIF tag


def picture(h: int = 48, w: int = 80) -> np.ndarray:
    """A non-symmetric RGB picture of flat blocks (JPEG-friendly): every rotation or flip of it looks different."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, :, 0] = 30
    img[: h // 2, : w // 3] = (220, 40, 40)  # top-left red block
    img[h // 2:, w // 2:] = (40, 200, 60)  # bottom-right green block
    img[: h // 4, w - w // 5:] = (250, 250, 250)  # small white block, top-right
    img[h - h // 3:, : w // 6] = (30, 60, 230)  # blue block, bottom-left
    return img


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ----------------------------------------------------------------------------------------------- modes
def test_rgb_png_is_exact(tmp_path):
    img = picture()
    Image.fromarray(img).save(tmp_path / "rgb.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, img)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48 * 80, dtype=np.uint32).reshape(48, 80) % 256
    Image.fromarray(gray.astype(np.uint8), mode="L").save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (48, 80, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_la_drops_alpha(tmp_path):
    gray = (np.arange(30 * 20).reshape(30, 20) % 256).astype(np.uint8)
    alpha = np.zeros_like(gray)  # fully transparent: colour must survive, not be blended to black or white
    Image.fromarray(np.stack([gray, alpha], -1), mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_rgba_drops_alpha_without_blending(tmp_path):
    img = picture()
    alpha = np.full(img.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0
    alpha[:10] = 77
    Image.fromarray(np.dstack([img, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out, img)


def test_palette_image_maps_through_its_palette(tmp_path):
    palette = [(12, 34, 56), (200, 10, 90), (0, 255, 128), (255, 255, 0)]
    index = (np.arange(40 * 60).reshape(40, 60) // 7 % 4).astype(np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette([v for rgb in palette for v in rgb])
    img.save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(out, np.array(palette, np.uint8)[index])


def test_palette_with_transparency(tmp_path):
    palette = [(12, 34, 56), (200, 10, 90)]
    index = (np.arange(20 * 30).reshape(20, 30) % 2).astype(np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette([v for rgb in palette for v in rgb])
    img.info["transparency"] = 0
    img.save(tmp_path / "pal_t.png", transparency=0)
    out = read_image(tmp_path / "pal_t.png")
    np.testing.assert_array_equal(out, np.array(palette, np.uint8)[index])


def test_16bit_png_scales_to_8bit(tmp_path):
    values = np.linspace(0, 65535, 32 * 64).reshape(32, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I"), check.mode  # really stored as 16 bit
    out = read_image(tmp_path / "deep.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert out.shape == (32, 64, 3)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
    assert out.min() == 0 and out.max() == 255


def test_dark_16bit_png_stays_dark(tmp_path):
    """A 16-bit file whose values happen to be <= 255 is still 16-bit data: nearly black, not stretched."""
    values = (np.arange(32 * 64).reshape(32, 64) % 256).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "dark.png")
    out = read_image(tmp_path / "dark.png")
    np.testing.assert_array_equal(out[:, :, 0], np.round(values * 255 / 65535).astype(np.uint8))
    assert out.max() == 1


def test_32bit_integer_tiff(tmp_path):
    values = np.linspace(0, 65535, 16 * 24).reshape(16, 24).astype(np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "int32.tif")
    out = read_image(tmp_path / "int32.tif")
    np.testing.assert_array_equal(out[:, :, 1], np.round(values * 255 / 65535).astype(np.uint8))
    # 8-bit data held in a 32-bit image stays as it is.
    small = (np.arange(16 * 24).reshape(16, 24) % 256).astype(np.int32)
    Image.fromarray(small, mode="I").save(tmp_path / "int32_small.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "int32_small.tif")[:, :, 0], small)


@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["unit_range", "byte_range"])
def test_float_tiff(tmp_path, scale):
    values = (np.linspace(0, 1, 16 * 24).reshape(16, 24) * scale).astype(np.float32)
    path = tmp_path / "float.tif"
    try:
        Image.fromarray(values, mode="F").save(path)
    except (OSError, ValueError) as e:  # pragma: no cover - depends on the Pillow build
        pytest.skip(f"this Pillow cannot write float TIFF: {e}")
    out = read_image(path)
    expected = np.round(values.astype(np.float64) * 255.0 / scale).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)


def test_cmyk_jpeg(tmp_path):
    img = picture()
    Image.fromarray(img).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == img.shape
    assert mean_abs(out, img) < 6.0  # JPEG loss only; inverted CMYK would be off by ~100


def test_bilevel_image(tmp_path):
    bits = (np.indices((20, 30)).sum(0) % 2).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    out = read_image(tmp_path / "bits.png")
    np.testing.assert_array_equal(out[:, :, 0], bits.astype(np.uint8) * 255)


# ----------------------------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation,k", [(6, 1), (3, 2), (8, -1)])
def test_exif_rotated_jpeg_comes_back_upright(tmp_path, orientation, k):
    """Orientation 6: a viewer turns the stored pixels 90 degrees clockwise; 3: 180 degrees; 8: counter-clockwise.

    The upright picture U is stored as rot90(U, k) so that the viewer's turn gives U back.
    """
    upright = picture(48, 80)
    stored = np.ascontiguousarray(np.rot90(upright, k))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = tmp_path / f"exif{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == upright.shape
    assert mean_abs(out, upright) < 4.0
    for wrong in (stored, np.rot90(upright, 2), np.fliplr(upright)):
        if wrong.shape == upright.shape and not np.array_equal(wrong, upright):
            assert mean_abs(out, wrong) > 20.0


def test_exif_orientation_on_png_and_pil_to_rgb(tmp_path):
    upright = picture(30, 50)
    img = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    img.save(tmp_path / "rot.png", exif=exif.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "rot.png"), upright)
    with Image.open(tmp_path / "rot.png") as opened:
        np.testing.assert_array_equal(pil_to_rgb(opened), upright)


# ----------------------------------------------------------------------------------------------- failures
def test_garbage_file_raises_naming_it(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_truncated_jpeg_raises(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_missing_file_and_directory_raise(tmp_path):
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(err.value)
    with pytest.raises(ImageReadError):
        read_image(tmp_path)


def test_image_read_error_is_a_value_error():
    assert issubclass(ImageReadError, ValueError)  # the CLIs turn ValueErrors into exit code 2 messages


# ----------------------------------------------------------------------------------------------- list_images
def test_list_images_sorted_and_filtered(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "C.JPEG", "d.webp", "notes.txt", "e.tif", "f.bmp", "g.tiff", ".hidden"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "z.jpg").write_bytes(b"x")  # not recursive
    (folder / "dir.jpg").mkdir()  # a folder with an image suffix is no image
    single = tmp_path / "single.data"
    single.write_bytes(b"x")  # an explicitly named file is taken whatever its suffix
    out = list_images([single, folder, str(folder / "a.jpg")])
    names = [p.name for p in out]
    assert names == ["single.data", "C.JPEG", "a.jpg", "b.png", "d.webp", "e.tif", "f.bmp", "g.tiff", "a.jpg"]
    assert all(isinstance(p, Path) for p in out)


def test_list_images_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        list_images([tmp_path / "absent"])
    assert str(tmp_path / "absent") in str(err.value)


def test_list_images_empty_folder(tmp_path):
    assert list_images([tmp_path]) == []



def test_list_images_expands_quoted_globs_like_folders(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.jpg", "c.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub" / "z.jpg").write_bytes(b"x")
    assert [p.name for p in list_images([str(folder / "*.jpg")])] == ["a.jpg", "b.jpg"]
    assert [p.name for p in list_images([str(folder / "*")])] == ["a.jpg", "b.jpg", "c.png", "z.jpg"]  # sub/ too
    assert [p.name for p in list_images([str(folder / "**" / "*.jpg")])] == ["a.jpg", "b.jpg", "z.jpg"]
    assert [p.name for p in list_images([str(folder / "[ab].*")])] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("pattern, message", [("*.gif", "the pattern matches no file"),
                                              ("*.txt", "matches 1 path(s) but no image file")])
def test_list_images_glob_without_images_is_an_error(tmp_path, pattern, message):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as err:
        list_images([str(tmp_path / pattern)])
    assert str(tmp_path / pattern) in str(err.value) and message in str(err.value)
