"""The `mfk210` command line, called in-process: the README's command table is the parser's command list,
every subcommand has help, `check` judges models."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mobilefacenet_k210 import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def _documented_commands():
    """The `mfk210 COMMAND` names in the first column of the README's *Command line* table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for row in section.splitlines():
        if row.startswith("| `mfk210"):
            first_cell = re.split(r"(?<!\\)\|", row)[1]
            names += re.findall(r"`mfk210 ([a-z][a-z0-9-]*)", first_cell)
    return names


def _parser_commands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_readme_command_table_documents_exactly_the_parser_commands():
    documented = _documented_commands()
    assert len(documented) == len(set(documented)), f"a command is listed twice in {README}: {documented}"
    assert set(documented) == _parser_commands(), (
        f"undocumented in {README}: {sorted(_parser_commands() - set(documented))}; "
        f"documented but missing: {sorted(set(documented) - _parser_commands())}")


def test_help_lists_every_documented_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in _documented_commands():
        assert re.search(rf"^\s+{re.escape(name)}\s", out, re.MULTILINE), name


@pytest.mark.parametrize("name", _documented_commands())
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
