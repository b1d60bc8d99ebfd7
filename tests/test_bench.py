"""`make bench-gpu`'s stage: a clear refusal without a GPU, and the mixed vs float32 measurement path
(run here on the CPU at a tiny size), merged into results.json and the table."""
import json

import pytest
import tensorflow as tf

from mobilefacenet_k210 import bench

TINY_MODEL = ["model.input_size=64", "model.width_multiplier=0.25", "model.embedding_size=32"]


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible")
def test_bench_gpu_refuses_without_a_gpu_and_says_how_to_get_one(tmp_path):
    with pytest.raises(bench.NoGPUError, match="tensorflow\\[and-cuda\\]"):
        bench.run_bench_gpu(tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_gpu_figures_measure_mixed_and_fp32_and_merge_into_the_results(tmp_path, monkeypatch):
    figures = bench.gpu_figures(batch_size=8, steps=2, require_gpu=False, model_overrides=TINY_MODEL)
    assert figures["gpu_train_img_per_s_mixed_b8"] > 0 and figures["gpu_train_img_per_s_fp32_b8"] > 0
    assert figures["gpu_mixed_over_fp32"] == pytest.approx(
        figures["gpu_train_img_per_s_mixed_b8"] / figures["gpu_train_img_per_s_fp32_b8"])

    (tmp_path / "results.json").write_text(json.dumps({"machine": "m", "date": "d", "params": 1_015_168}))
    fake = {"gpu": "Test GPU", "gpu_train_img_per_s_mixed_b512": 3000.0, "gpu_train_img_per_s_fp32_b512": 1500.0,
            "gpu_mixed_over_fp32": 2.0}
    monkeypatch.setattr(bench, "gpu_figures", lambda: fake)
    bench.run_bench_gpu(tmp_path)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["params"] == 1_015_168 and merged["gpu_mixed_over_fp32"] == 2.0
    table = (tmp_path / "results.md").read_text()
    assert "| gpu_mixed_over_fp32 | 2.0000 | > 1 (mixed precision pays on the GPU) | pass |" in table
    assert "Test GPU" in table
