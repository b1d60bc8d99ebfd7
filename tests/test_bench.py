"""`make bench-gpu`'s stage: a clear refusal without a GPU, the mixed vs float32 measurement path (run here
on the CPU at a tiny size) merged into results.json and the table, and a broken results.json named."""
import json

import pytest
import tensorflow as tf

from mobilefacenet_k210 import bench
from mobilefacenet_k210.cli import main

TINY_MODEL = ["model.input_size=64", "model.width_multiplier=0.25", "model.embedding_size=32"]
TINY = {"batch_size": 8, "steps": 2, "require_gpu": False, "model_overrides": TINY_MODEL}


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible")
def test_bench_gpu_refuses_without_a_gpu_and_says_how_to_get_one(tmp_path):
    with pytest.raises(bench.NoGPUError, match="tensorflow\\[and-cuda\\]"):
        bench.run_bench_gpu(tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_gpu_figures_recomputed_from_raw_timings_and_merged_into_the_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"machine": "m", "date": "d", "params": 1_015_168}))
    bench.run_bench_gpu(tmp_path, **TINY)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["params"] == 1_015_168  # kept from `make bench`
    rates = {}
    for precision in ("mixed", "fp32"):
        images, seconds = merged[f"gpu_train_images_{precision}_b8"], merged[f"gpu_train_seconds_{precision}_b8"]
        assert images == 8 * 2 and seconds > 0
        rates[precision] = images / seconds
        assert merged[f"gpu_train_img_per_s_{precision}_b8"] == pytest.approx(rates[precision])
    ratio = rates["mixed"] / rates["fp32"]
    assert merged["gpu_mixed_over_fp32"] == pytest.approx(ratio)
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| gpu_mixed_over_fp32 |"))
    assert row == (f"| gpu_mixed_over_fp32 | {merged['gpu_mixed_over_fp32']:,.4f} | > 1 (mixed precision pays on "
                   f"the GPU) | {'pass' if ratio > 1 else '**fail**'} |")
    assert merged["gpu"] in table


@pytest.mark.parametrize("text, why", [("{broken", "not valid JSON"), ("[1, 2]", "not an object of figures")])
def test_malformed_results_json_is_named(tmp_path, text, why, capsys):
    (tmp_path / "results.json").write_text(text)
    assert main(["bench", "--gpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mfk210 bench: error: "), err
    assert str(tmp_path / "results.json") in err and why in err
    assert (tmp_path / "results.json").read_text() == text
