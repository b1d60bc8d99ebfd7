"""Config dataclasses load from files and overrides, and refuse what does not fit."""
import dataclasses
from typing import List, Optional

import numpy as np
import pytest

from mobilefacenet_k210 import config, preprocessing


@dataclasses.dataclass
class Inner:
    lr: float = 0.1
    steps: List[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)
    phases: List[Inner] = dataclasses.field(default_factory=list)
    limit: Optional[int] = None


def test_defaults_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: run\ninner:\n  lr: 0.5\nphases:\n  - {lr: 1}\n  - {lr: 2, steps: [3, 4]}\n")
    c = config.load(Outer, f, ["inner.steps=[1,2]", "phases.1.lr=0.25", "flag=true", "limit=7"])
    assert c.name == "run" and c.flag is True and c.limit == 7
    assert c.inner == Inner(0.5, [1, 2])
    assert c.phases == [Inner(1.0, []), Inner(0.25, [3, 4])]
    assert config.from_dict(Outer, config.to_dict(c)) == c


def test_json_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"inner": {"lr": 0.01}}')
    assert config.load(Outer, f).inner.lr == 0.01


@pytest.mark.parametrize("text, message", [
    ("nmae: typo\n", "unknown key"),
    ("inner: {lr: fast}\n", "expected float"),
    ("flag: maybe\n", "expected true/false"),
    ("- a\n- b\n", "must be a mapping"),
    ("inner: [1\n", "cannot parse"),
])
def test_bad_files_name_the_file(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=message) as err:
        config.load(Outer, f)
    assert "bad.yaml" in str(err.value) or "Outer" in str(err.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(Outer, tmp_path / "nope.yaml")
    with pytest.raises(config.ConfigError, match="KEY=VALUE"):
        config.load(Outer, None, ["flag"])


def test_normalization_contract():
    pixels = np.array([0, 127.5, 255], dtype=np.float32)
    out = preprocessing.normalize(pixels)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-127.5 / 128, 0.0, 127.5 / 128])
    assert preprocessing.input_range() == pytest.approx((-127.5 / 128, 127.5 / 128))
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(preprocessing.denormalize(preprocessing.normalize(img)), img)


def test_normalization_same_for_tensors():
    tf = pytest.importorskip("tensorflow")
    img = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(preprocessing.normalize(tf.constant(img)).numpy(), preprocessing.normalize(img))


def test_template_fits_the_crop():
    t = preprocessing.ARCFACE_TEMPLATE
    assert t.shape == (5, 2)
    assert (t > 0).all() and (t < preprocessing.INPUT_SIZE).all()
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # left before right
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above nose above mouth
