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


# --- one loader: defaults, file, flags, overrides ---------------------------------------------------
CONFIG_CLASSES = [config.ModelConfig, config.PipelineConfig, config.PhaseConfig, config.TrainConfig,
                  config.PolicyConfig, config.BuildConfig, config.ExportConfig, config.EvalConfig,
                  config.BoardConfig, config.DemoConfig]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_config_loads_its_defaults(cls):
    assert config.load(cls) == cls()


def test_file_merges_nested_configs_and_replaces_lists_and_free_mappings(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("model: {embedding_size: 64}\nverification: {lfw: a.bin}\nphases: [{head: arcface}]\n")
    c = config.load(config.TrainConfig, f, ["verification.cfp_fp=b.bin"])
    assert c.model == config.ModelConfig(embedding_size=64)  # the other model fields keep their defaults
    assert c.phases == [config.PhaseConfig(head="arcface")]  # the file's list, not merged with the default one
    assert c.verification == {"lfw": "a.bin", "cfp_fp": "b.bin"}
    f.write_text("reduced_photos: {s1: 2}\n")
    assert config.load(config.DemoConfig, f).reduced_photos == {"s1": 2}  # a free-form mapping is replaced


def test_override_reaches_and_appends_list_entries():
    c = config.load(config.TrainConfig, None, ["phases.1.epochs=3"])
    assert c.phases == [config.PhaseConfig(head="softmax", epochs=10),
                        config.PhaseConfig(head="arcface", epochs=3, lr_steps=[10, 15])]
    c = config.load(config.TrainConfig, None, ["phases.2={head: triplet}", "phases.3.head=cosface",
                                               "phases.3.epochs=4"])
    assert [(p.head, p.epochs) for p in c.phases] == [("softmax", 10), ("arcface", 20), ("triplet", 1), ("cosface", 4)]
    assert c.phases[2] == config.PhaseConfig(head="triplet")
    assert config.load(Outer, None, ["phases.0.lr=3", "inner.steps.0=5"]).phases == [Inner(3.0)]


@pytest.mark.parametrize("override, message", [
    ("phases.3={head: triplet}", r"phases has 2 entries, index 3 is out of range \(0\.\.1 names an entry, 2 appends"),
    ("phases.-3.epochs=1", "index -3 is out of range"),
    ("phases.first.epochs=1", r"phases is a list; 'first' is not an index"),
    ("seed.value=1", "seed is 0, not a mapping or a list"),
    ("phases.0.lr_steps.1=2", r"phases\.0\.lr_steps has 0 entries, index 1 is out of range \(0 appends one\)"),
])
def test_bad_override_paths_are_config_errors(override, message):
    with pytest.raises(config.ConfigError, match=message) as err:
        config.load(config.TrainConfig, None, [override])
    assert override in str(err.value)


def test_flags_and_presets_come_between_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: file\nlimit: 3\ninner: fast\n")
    presets = {"inner": lambda name: Inner(lr={"fast": 0.5, "slow": 0.01}[name])}
    c = config.load(Outer, f, ["inner.steps=[1]"], flags={"name": "flag", "limit": None}, presets=presets)
    assert c.name == "flag" and c.limit == 3  # a None flag was not given
    assert c.inner == Inner(0.5, [1])  # the preset, then the override onto it
    c = config.load(Outer, f, ["name=set"], flags={"name": "flag", "inner": "slow"}, presets=presets)
    assert c.name == "set" and c.inner == Inner(0.01)


def test_every_config_validates_itself_with_its_choices_beside_its_fields():
    """Each stage's choice list lives once, in the schema; loading validates, naming the field."""
    cases = [(config.TrainConfig, "strategy=tpu", "strategy"), (config.TrainConfig, "phases.0.head=sphereface", "head"),
             (config.TrainConfig, "phases.1.optimizer=lion", "optimizer"), (config.BuildConfig, "runner=spark", "runner"),
             (config.BuildConfig, "select=smallest", "select"), (config.ExportConfig, "calibrate_method=kld", "calibrate"),
             (config.ExportConfig, "w_quant_type=int4", "w_quant_type"), (config.EvalConfig, "nfolds=1", "nfolds"),
             (config.TrainConfig, "model.activation=swish", "activation"),
             (config.TrainConfig, "model.input_orientation=rot90", "input_orientation"),
             (config.TrainConfig, "phases.0.lr_schedule=linear", "lr_schedule"),
             (config.PretrainedConfig, "gallery_mode=median", "gallery_mode")]
    for cls, override, field in cases:
        with pytest.raises(config.ConfigError, match=field):
            config.load(cls, None, [override])
    for cls in (config.TrainConfig, config.BuildConfig, config.ExportConfig, config.EvalConfig,
                config.PretrainedConfig):
        cls().validate()


def test_cli_choices_come_from_the_schema():
    from mobilefacenet_k210 import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    choices = {(name, a.dest): tuple(a.choices) for name, p in sub.items() for a in p._actions if a.choices}
    assert choices[("train", "strategy")] == config.STRATEGIES
    assert choices[("build-tfrecords", "runner")] == config.RUNNERS
    assert choices[("build-tfrecords", "policy")] == config.POLICY_PRESETS
    assert choices[("export", "calibrate_method")] == config.CALIBRATE_METHODS
    assert choices[("export", "w_quant_type")] == config.W_QUANT_TYPES


def test_flag_paths_are_never_reparsed_as_yaml(monkeypatch, tmp_path):
    """A path with ' #' (a YAML comment) or ': ' reaches the config whole, through every command's flags."""
    from mobilefacenet_k210 import cli

    odd = str(tmp_path / "run #2: final" / "select.bin")
    seen = {}
    monkeypatch.setattr("mobilefacenet_k210.evaluate.evaluate", lambda c: seen.setdefault("evaluate", c))
    assert cli.main(["evaluate", "--model", odd, "--json", odd]) == 0
    assert seen["evaluate"].models == [odd] and seen["evaluate"].json == odd
    monkeypatch.setattr("mobilefacenet_k210.export.export_model",
                        lambda m, c, o, conf, h: seen.setdefault("export", conf))
    assert cli.main(["export", "--model", odd, "--calib", odd, "--out", odd, "--no-int8-tflite", "--seed", "3"]) == 0
    assert seen["export"].int8_tflite is False and seen["export"].quantize is True and seen["export"].seed == 3
    monkeypatch.setattr("mobilefacenet_k210.training.run.train", lambda c, d, o, **k: seen.setdefault("train", c))
    assert cli.main(["train", "--data", odd, "--out", odd, "--set", f"verification.select={odd}",
                     "--strategy", "mirrored"]) == 0
    assert seen["train"].strategy == "mirrored"
    assert seen["train"].verification == {"select": odd}
    assert config.apply_overrides({}, ["a=[1, 2]", "b={c: 3}", "d=0.5", "e=true", "f=null", "g=x: y"]) == \
        {"a": [1, 2], "b": {"c": 3}, "d": 0.5, "e": True, "f": None, "g": "x: y"}


def test_shipped_configs_load_from_any_folder(tmp_path, monkeypatch):
    """`mfk210 demo` from another folder: configs/NAME resolves to the package's copy, a local file wins."""
    monkeypatch.chdir(tmp_path)
    demo = config.load(config.DemoConfig)
    train = config.load(config.TrainConfig, demo.train_config)
    assert config.resolve(demo.train_config).parent == config.PACKAGED
    assert [p.head for p in train.phases] == ["softmax", "arcface"]
    assert config.load(config.BuildConfig, "demo_build.yaml").policy.rules
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo_cpu.yaml").write_text("seed: 5\n")
    assert config.load(config.TrainConfig, "configs/demo_cpu.yaml").seed == 5
    with pytest.raises(config.ConfigError, match="demo_cpu.yaml"):
        config.load(config.TrainConfig, "configs/nope.yaml")
