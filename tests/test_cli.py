"""The `mfk210` command line, called in-process: every subcommand has help, `check` judges models."""
import subprocess
import sys

import pytest

from mobilefacenet_k210 import cli


def _subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("name", _subcommands())
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage: mfk210 " + name in capsys.readouterr().out


def test_module_entry_point_and_no_command():
    proc = subprocess.run([sys.executable, "-m", "mobilefacenet_k210"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "COMMAND" in proc.stdout


def test_check_accepts_mobilefacenet_and_names_illegal_layers(tmp_path, capsys):
    tf = pytest.importorskip("tensorflow")
    from mobilefacenet_k210.config import ModelConfig
    from mobilefacenet_k210.model.io import save_embedding_model
    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet

    good = save_embedding_model(MobileFaceNet(ModelConfig(width_multiplier=0.25, input_size=64)), tmp_path / "run")
    assert cli.main(["check", "--model", str(tmp_path / "run")]) == 0
    assert "K210-legal" in capsys.readouterr().out

    inputs = tf.keras.Input((32, 32, 3))
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", name="bad_stride")(inputs)
    x = tf.keras.layers.PReLU(name="bad_prelu")(x)
    bad = tf.keras.Model(inputs, x)
    bad.save(tmp_path / "bad.keras")
    assert cli.main(["check", "--model", str(tmp_path / "bad.keras")]) == 1
    out = capsys.readouterr().out
    assert "bad_stride" in out and "bad_prelu" in out and "not deployable" in out
    assert good.is_file()


def test_check_missing_model_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["check", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "no such file" in err
