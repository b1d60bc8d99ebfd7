"""The demo's step runner: a finished step is reused only when made from the same inputs, a changed config
reruns its step and the ones after it, broken records are named, a killed run's temporaries go away, photo
copies are atomic, and the time estimate scales with what this machine measured."""
import json
import shutil

import pytest

from mobilefacenet_k210.demo import run as demo, steps as demo_steps
from mobilefacenet_k210.cli import main
from mobilefacenet_k210.config import DemoConfig


class Killed(Exception):
    """Stands for a kill in the middle of a step."""


def _killed():
    raise Killed


class Steps:
    """Real step functions: each writes its output under OUT and counts its runs."""

    def __init__(self, out, outputs=demo.STEP_OUTPUTS):
        self.out, self.outputs, self.runs = out, outputs, []

    def __call__(self, d: demo.Demo, names=("faces", "shards", "aligned", "pairs", "train")):
        for name in names:
            d.run(name, lambda name=name: self.make(name))

    def make(self, name):
        self.runs.append(name)
        target = self.out / self.outputs[name][0]
        if target.suffix:
            target.write_text(name)
        else:
            assert not (target / "made").exists(), f"{target} was not cleared before {name} reran"
            target.mkdir(parents=True, exist_ok=True)
            (target / "made").write_text(name)
        return {"step": name}


@pytest.fixture
def configs(tmp_path):
    (tmp_path / "build.yaml").write_text("seed: 0\n")
    (tmp_path / "train.yaml").write_text("seed: 0\n")
    return lambda **changes: DemoConfig(**{"build_config": str(tmp_path / "build.yaml"),
                                           "train_config": str(tmp_path / "train.yaml"), **changes})


def test_steps_are_reused_only_when_made_from_the_same_inputs(tmp_path, configs):
    out = tmp_path / "demo"
    steps = Steps(out)
    steps(demo.Demo(out, configs()))
    assert steps.runs == ["faces", "shards", "aligned", "pairs", "train"]
    usage = json.loads((out / "steps" / "train.json").read_text())["usage"]  # what report.md's table shows
    assert usage["cpu_seconds"] >= 0 and usage["load_average"] >= 0
    steps.runs.clear()
    steps(demo.Demo(out, configs(workers=3)))  # workers change speed only
    assert steps.runs == []

    (tmp_path / "build.yaml").write_text("seed: 1\n")  # the build config file's content changed
    steps(demo.Demo(out, configs()))
    assert steps.runs == ["shards", "aligned", "pairs", "train"]
    steps.runs.clear()

    steps(demo.Demo(out, configs(train_config=str(tmp_path / "other.yaml"))))  # a config field changed
    assert steps.runs == ["train"]
    steps.runs.clear()
    steps(demo.Demo(out, configs(test=[31, 32])))
    assert steps.runs == ["faces", "shards", "aligned", "pairs", "train"]


def test_the_bench_distill_steps_follow_the_demo_and_rerun_for_their_config_or_a_changed_demo(tmp_path, configs):
    """The bench's distill stage runs its steps like the demo's, chained after the demo's last one: its
    own config reruns them alone, a changed demo step reruns them all, an unfinished demo is named."""
    from mobilefacenet_k210.bench.students import DemoNotFinishedError, DistillSteps, distill_figures

    out, work = tmp_path / "demo", tmp_path / "distill"
    names, distill_names = [s[0] for s in demo.STEPS], [s[0] for s in DistillSteps.steps]
    assert not set(names) & set(distill_names)
    demo_steps_, distill_steps = Steps(out), Steps(work, DistillSteps.step_outputs)

    def run_both(seed):
        (tmp_path / "distill.yaml").write_text(f"seed: {seed}\n")
        config = configs(distill_config=str(tmp_path / "distill.yaml"))
        d = demo.Demo(out, config)
        demo_steps_(d, names)
        replayed = demo.Demo(out, config)
        assert replayed.replay() == [] and replayed.previous == d.previous
        distill_steps(DistillSteps(work, config, after=replayed.previous), distill_names)

    run_both(0)
    assert distill_steps.runs == distill_names
    distill_steps.runs.clear()
    run_both(1)  # the distill recipe changed
    assert demo_steps_.runs == names and distill_steps.runs == distill_names[1:]
    distill_steps.runs.clear()
    (tmp_path / "train.yaml").write_text("seed: 2\n")  # the demo's training changed
    run_both(1)
    assert demo_steps_.runs == names + names[names.index("train"):] and distill_steps.runs == distill_names
    (out / "steps" / "inspect.json").unlink()
    config = configs(distill_config=str(tmp_path / "distill.yaml"))
    assert demo.Demo(out, config).replay() == ["inspect"]
    with pytest.raises(DemoNotFinishedError, match="inspect.json: the demo's step inspect is missing"):
        distill_figures(out, work, config)


def test_a_step_interrupted_under_other_inputs_starts_clean(tmp_path, configs):
    out = tmp_path / "demo"
    steps = Steps(out)
    steps(demo.Demo(out, configs()), ["faces", "shards", "aligned", "pairs"])
    d = demo.Demo(out, configs())
    steps(d, ["faces", "shards", "aligned", "pairs"])
    with pytest.raises(Killed):
        d.run("train", _killed)  # killed half-way
    assert (out / "steps" / "train.started.json").is_file()
    (out / "train" / "made").parent.mkdir(parents=True, exist_ok=True)
    (out / "train" / "made").write_text("half")
    steps(demo.Demo(out, configs(train_config=str(tmp_path / "other.yaml"))))
    assert steps.runs[-1:] == ["train"] and (out / "train" / "made").read_text() == "train"
    assert not (out / "steps" / "train.started.json").exists()


@pytest.mark.parametrize("text, why", [("{broken", "not valid JSON"), ('{"result": 1}', "not a demo step record")])
def test_a_broken_step_record_is_named(tmp_path, text, why, capsys):
    record = tmp_path / "demo" / "steps" / "faces.json"
    record.parent.mkdir(parents=True)
    record.write_text(text)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mfk210 demo: error: "), err
    assert str(record) in err and why in err and "delete it to rerun step faces" in err


def test_a_killed_runs_temporaries_are_removed_and_nothing_else(tmp_path, configs):
    out = tmp_path / "demo"
    leftovers = [out / "raw" / "train" / "s1" / ".1.pgm.0a1b2c3d.tmp", out / "train" / ".loss.png.0a1b2c3d.png",
                 out / "board" / ".sd.0a1b2c3d.tmp" / "mfk210_config.json"]
    kept = [out / "raw" / "train" / "s1" / "1.pgm", out / "train" / "loss.png", out / "board" / "sd" / "x.json"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    demo.Demo(out, configs())
    assert [p for p in leftovers if p.exists()] == [] and not (out / "board" / ".sd.0a1b2c3d.tmp").exists()
    assert all(p.is_file() for p in kept)


def test_photo_copies_are_atomic(tmp_path, monkeypatch):
    src = tmp_path / "orl" / "s1"
    src.mkdir(parents=True)
    for k in (1, 2):
        (src / f"{k}.pgm").write_bytes(bytes(range(256)) * 40)
    real_copy = shutil.copyfile

    def killed_half_way(a, b, *args, **kwargs):
        with open(b, "wb") as f:
            f.write(open(a, "rb").read()[:100])
        raise Killed

    monkeypatch.setattr(demo.shutil, "copyfile", killed_half_way)
    with pytest.raises(Killed):
        demo_steps._copy_identity(src, tmp_path / "raw" / "s1")
    assert list((tmp_path / "raw" / "s1").iterdir()) == []  # no truncated photo under its real name
    monkeypatch.setattr(demo.shutil, "copyfile", real_copy)
    assert demo_steps._copy_identity(src, tmp_path / "raw" / "s1") == 2
    assert (tmp_path / "raw" / "s1" / "1.pgm").read_bytes() == (src / "1.pgm").read_bytes()


def test_time_left_scales_with_the_steps_measured_here(tmp_path, configs, capsys):
    cost = {name: weight for name, _, weight in demo.STEPS}
    pending = [name for name, _, _ in demo.STEPS[2:]]
    assert demo.estimate_left({}, pending) is None
    measured = {"faces": 12.0, "shards": 30.0}
    expected = (12.0 + 30.0) / (cost["faces"] + cost["shards"]) * sum(cost[n] for n in pending)
    assert demo.estimate_left(measured, pending) == pytest.approx(expected)
    slower = {k: 2 * v for k, v in measured.items()}
    assert demo.estimate_left(slower, pending) == pytest.approx(2 * expected)

    out = tmp_path / "demo"
    d = demo.Demo(out, configs())
    d.run("faces", lambda: {})
    assert "time left estimated once a step has run on this machine" in capsys.readouterr().out
    d.seconds["faces"] = 12.0
    d.run("shards", lambda: {})
    left = 12.0 / cost["faces"] * sum(cost[n] for n, _, _ in demo.STEPS[1:])
    assert f"about {left / 60:.1f} min left, scaled from the 1 step(s) measured so far" in capsys.readouterr().out
