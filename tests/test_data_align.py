"""read_image on every format the builder promises, and MTCNN alignment of real faces."""
import numpy as np
import pytest

from mobilefacenet_k210.data.align import FaceAligner, ImageError, align_to_template, read_image
from mobilefacenet_k210.preprocessing import ARCFACE_TEMPLATE


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner(min_face_size=20)


@pytest.fixture(scope="module")
def rgb():
    """A smooth colour picture (lossy formats stay close to it)."""
    from skimage import data
    import cv2

    return cv2.resize(data.astronaut(), (96, 80), interpolation=cv2.INTER_AREA)


def _save_pillow(img, path, mode=None, **kw):
    from PIL import Image

    im = Image.fromarray(img)
    if mode:
        im = im.convert(mode)
    im.save(path, **kw)


@pytest.mark.parametrize("name,writer,tol", [
    ("photo.jpg", lambda im, p: _save_pillow(im, p, quality=95), 8),
    ("cmyk photo.JPG", lambda im, p: _save_pillow(im, p, mode="CMYK", quality=95), 12),
    ("ünïcödé (1).png", lambda im, p: _save_pillow(im, p), 0),
    ("photo.bmp", lambda im, p: _save_pillow(im, p), 0),
    ("photo.gif", lambda im, p: _save_pillow(im, p), 40),
    ("photo.webp", lambda im, p: _save_pillow(im, p, lossless=True), 0),
    ("photo.tiff", lambda im, p: _save_pillow(im, p), 0),
])
def test_read_image_formats(tmp_path, rgb, name, writer, tol):
    path = tmp_path / name
    writer(rgb, path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() <= tol


def test_read_image_alpha_16bit_gray(tmp_path, rgb):
    import cv2

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    _save_pillow(rgba, tmp_path / "alpha.png")
    assert np.array_equal(read_image(tmp_path / "alpha.png"), rgb)

    sixteen = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), sixteen[:, :, ::-1])
    assert np.array_equal(read_image(tmp_path / "deep.png"), rgb)

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.pgm"), gray)
    out = read_image(tmp_path / "gray.pgm")
    assert out.shape == rgb.shape and np.array_equal(out[:, :, 0], gray) and np.array_equal(out[:, :, 2], gray)

    _save_pillow(sixteen[:, :, 0], tmp_path / "gray16.tiff")
    out = read_image(tmp_path / "gray16.tiff")
    assert out.shape == rgb.shape and np.abs(out[:, :, 0].astype(int) - rgb[:, :, 0]).max() <= 1


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, this is text and not a photo\n" * 10, "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "not an image"),
])
def test_read_image_rejects_with_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad file.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert reason in err.value.reason and str(path) in str(err.value)


def test_read_image_missing_and_folder(tmp_path):
    with pytest.raises(ImageError, match="unreadable"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_alignment_puts_landmarks_on_template(aligner):
    """Detect the astronaut's face, align it, detect again on the crop: the landmarks are where the
    similarity transform sends them (within 2 px), and that transform fits the template as well as a
    similarity can (this face's pose leaves a few px of residual at the mouth)."""
    from skimage import data
    from skimage.transform import SimilarityTransform

    image = data.astronaut()
    result = aligner.align([image])[0]
    assert result.crop is not None and result.crop.shape == (112, 112, 3) and result.crop.dtype == np.uint8
    marks = result.detection.landmarks
    tform = SimilarityTransform()
    assert tform.estimate(marks, ARCFACE_TEMPLATE)
    mapped = tform(marks)
    again = aligner.choose(aligner.detect([result.crop])[0], result.crop.shape)
    assert again is not None
    assert np.linalg.norm(again.landmarks - mapped, axis=1).max() < 2.0
    assert np.linalg.norm(mapped - ARCFACE_TEMPLATE, axis=1).mean() < 5.0
    # both eyes land on the template's eyes
    assert np.linalg.norm(again.landmarks[:2] - ARCFACE_TEMPLATE[:2], axis=1).max() < 4.0


def test_align_to_template_exact_on_synthetic_points():
    """Landmarks that are an exact similarity of the template map onto it to within interpolation."""
    import cv2

    angle, scale, shift = np.deg2rad(20), 2.0, np.array([150.0, 90.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    marks = ARCFACE_TEMPLATE @ rot.T + shift
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in marks:
        cv2.circle(image, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
    crop = align_to_template(image, marks)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 200


def test_detect_align_batch_of_real_faces(aligner):
    """ORL photos in one batched call: every one gives a crop, and a blank picture gives None."""
    from mobilefacenet_k210.data.orl import fetch_orl

    root = fetch_orl()
    images = [read_image(p) for p in sorted((root / "s1").glob("*.pgm"))[:4]]
    images.append(np.full((120, 100, 3), 127, np.uint8))
    crops = aligner.detect_align(images)
    assert [c is None for c in crops] == [False] * 4 + [True]
    assert all(c.shape == (112, 112, 3) and c.dtype == np.uint8 for c in crops[:4])


def test_large_photo_detected_downscaled_and_cropped_at_full_resolution(aligner):
    """A photo above detect_max_side is detected on a smaller copy; the landmarks are scaled back, so
    the crop matches the one from the original-size photo."""
    import cv2
    from skimage import data

    image = data.astronaut()
    big = cv2.resize(image, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    small_result, big_result = aligner.align([image])[0], aligner.align([big])[0]
    assert big_result.crop is not None
    assert np.abs(big_result.detection.landmarks / 4 - small_result.detection.landmarks).max() < 3
    assert np.abs(big_result.crop.astype(int) - small_result.crop.astype(int)).mean() < 12
