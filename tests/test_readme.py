"""The README's "Your own people" commands, read from README.md and run on a tiny folder of ORL photos.

Each block marked ``<!-- test: NAME -->`` is run command by command through the CLI, in a folder
where the paths the README names exist: ``runs/pretrained/`` holds the session's tiny kmodel and an
open-set result measured with it (``make pretrained`` itself is too long for a test), ``my_people/``,
``RAW/`` and ``held_out/`` hold raw ORL photos. The only word swapped is the training config
(``configs/demo_cpu.yaml`` -> one tiny epoch), so the README cannot show a command that does not run.
"""
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

from mobilefacenet_k210.cli import main
from conftest import orl_crop

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_TRAINING = {  # the README's config swapped for one epoch of the smallest model the board takes
    "model": {"width_multiplier": 0.25, "embedding_size": 32},
    "pipeline": {"shuffle_buffer": 32, "cycle_length": 2, "validation": False},
    "phases": [{"head": "softmax", "epochs": 1, "batch_size": 8, "lr": 0.05}],
}


def readme_commands(name: str) -> List[List[str]]:
    """The commands of the README's bash block marked ``<!-- test: name -->``, continuations joined."""
    found = re.search(rf"<!-- test: {re.escape(name)} -->\n```bash\n(.*?)```", README.read_text(encoding="utf-8"),
                      re.S)
    assert found, f"{README}: no bash block marked <!-- test: {name} -->"
    text = found.group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in text.splitlines()]
    return [c for c in commands if c]


def run_block(name: str, folder: Path, monkeypatch, swap: Dict[str, str] = None) -> List[List[str]]:
    """Run every command of the block in ``folder``; each must be an `mfk210` command that exits 0."""
    monkeypatch.chdir(folder)
    commands = readme_commands(name)
    for argv in commands:
        assert argv[0] == "mfk210", f"{README} block {name}: {argv[0]!r} is not an mfk210 command"
        argv = [(swap or {}).get(word, word) for word in argv[1:]]
        assert main(argv) == 0, f"{README} block {name}: `mfk210 {shlex.join(argv)}` failed"
    return commands


def _photos(orl: Path, folder: Path, people: List[str], photos: List[int]) -> Path:
    """Raw ORL photos (92x112, one face each) as ``folder/<person>/<k>.jpg``, as a user's folder holds them."""
    for person in people:
        (folder / person).mkdir(parents=True)
        for k in photos:
            cv2.imwrite(str(folder / person / f"{k}.jpg"), cv2.imread(str(orl / person / f"{k}.pgm")))
    return folder


def _pretrained_stand_in(tiny_k210, root: Path, monkeypatch) -> Path:
    """``runs/pretrained`` as `make pretrained` leaves it: a kmodel with its record, an open-set result."""
    export = root / "runs" / "pretrained" / "export"
    export.mkdir(parents=True)
    shutil.copyfile(tiny_k210["kmodel"], export / "model.kmodel")
    shutil.copyfile(f"{tiny_k210['kmodel']}.json", export / "model.kmodel.json")
    crops = root / "openset_faces"
    for person in ("s7", "s8", "s9", "s10"):
        (crops / person).mkdir(parents=True)
        for k in (1, 2, 3):
            cv2.imwrite(str(crops / person / f"{k}.png"), orl_crop(tiny_k210["orl"] / person / f"{k}.pgm")[:, :, ::-1])
    monkeypatch.chdir(root)
    assert main(["evaluate", "--identification", "--folder", str(crops), "--aligned", "--enroll-photos", "2",
                 "--model", "runs/pretrained/export/model.kmodel",
                 "--json", "runs/pretrained/openset/results.json"]) == 0
    return root


def test_readme_enroll_path_runs_with_a_model_you_have(tiny_k210, tmp_path, monkeypatch, capsys):
    root = _pretrained_stand_in(tiny_k210, tmp_path, monkeypatch)
    _photos(tiny_k210["orl"], root / "my_people", ["s1", "s2", "s3"], [1, 2, 3])
    cv2.imwrite(str(root / "new_photo.jpg"), cv2.imread(str(tiny_k210["orl"] / "s2" / "7.pgm")))
    capsys.readouterr()
    run_block("own-people-enroll", root, monkeypatch)
    printed = capsys.readouterr().out
    gallery = json.loads((root / "gallery.json").read_text())
    assert sorted({p["name"] for p in gallery["people"]}) == ["s1", "s2", "s3"]
    assert re.search(r"new_photo\.jpg: (s1|s2|s3|unknown)", printed), printed
    config = json.loads((root / "sd" / "mfk210_config.json").read_text())
    assert config["threshold"]["from"] == "open-set identification" and config["threshold"]["gallery_size"] == 3
    assert f"{config['threshold']['score']:.1f}" in printed  # identify used the threshold the board carries
    assert sorted(p.name for p in (root / "sd").iterdir()) == sorted(
        ["canmv_face_id.py", "mfk210_config.json", "mfk210_gallery.json", "mfk210.kmodel"])


def test_readme_training_path_runs_on_a_family_folder(tiny_k210, tmp_path, monkeypatch, capsys):
    import yaml

    orl = tiny_k210["orl"]
    # 10 photos a person: the seed policy would drop them all; --val-fraction 0.1 puts 1 of each in val
    _photos(orl, tmp_path / "RAW", ["s11", "s12", "s13"], list(range(1, 11)))
    _photos(orl, tmp_path / "held_out", ["s15", "s16", "s17"], [1, 2, 3, 4, 5, 6])  # 5 enrolled, 1 probe
    _photos(orl, tmp_path / "my_people", ["s1", "s2"], [1, 2])
    tiny = tmp_path / "tiny_training.yaml"
    tiny.write_text(yaml.safe_dump(TINY_TRAINING))
    commands = run_block("own-people-train", tmp_path, monkeypatch, {"configs/demo_cpu.yaml": str(tiny)})
    assert any("configs/demo_cpu.yaml" in c for c in commands), "the README's training config is what the test swaps"
    meta = json.loads((tmp_path / "runs" / "mine" / "shards" / "metadata.json").read_text())
    assert meta["num_classes"] == 3  # --policy none kept every person
    config = json.loads((tmp_path / "sd" / "mfk210_config.json").read_text())
    assert config["threshold"]["from"] == "open-set identification" and config["threshold"]["gallery_size"] == 2
    assert np.isfinite(config["threshold"]["score"])
