"""`make bench-scale` at toy sizes: every curve measured, the JSON, the table and the PNG written."""
import functools
import json

from mobilefacenet_k210.bench import scale as bench_scale


def test_bench_scale_measures_every_curve_and_rewrites_the_docs_section(tmp_path, monkeypatch):
    # toy sizes for the measurements too: the real functions, a few small batches each (the default
    # thousands of images per shard count were most of this test's time and prove nothing more here)
    monkeypatch.setattr(bench_scale, "measure_input", functools.partial(bench_scale.measure_input, batch_size=16,
                                                                        batches=3))
    monkeypatch.setattr(bench_scale, "measure_head", functools.partial(bench_scale.measure_head, batch_size=16,
                                                                       steps=1))
    doc = tmp_path / "scale.md"
    doc.write_text(f"# Scale\n\nbefore\n\n{bench_scale.BEGIN}\nold table\n{bench_scale.END}\n\nafter\n")
    results = bench_scale.run_bench_scale(tmp_path / "bench", doc, records=(20, 60), shards=(1, 3), classes=(5, 60))
    saved = json.loads((tmp_path / "bench" / "scale.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert [r["records"] for r in saved["builder"]] == [20, 60]
    small, large = saved["builder"]
    assert large["metadata_bytes"] > small["metadata_bytes"]  # one entry per class: grows with identities
    assert all(r["records_per_s"] > 0 and r["maxrss_main_mb"] > 0 for r in saved["builder"])
    assert [r["shards"] for r in saved["input"]] == [1, 3]
    assert all(r["images_per_s"] > 0 and r["first_batch_s"] > 0 for r in saved["input"])
    heads = {(r["classes"], r["sample_rate"]): r for r in saved["heads"]}
    assert set(heads) == {(5, 1.0), (60, 1.0), (60, bench_scale.SAMPLE_RATE)}
    assert heads[(60, 1.0)]["head_params"] == 60 * 128 == 12 * heads[(5, 1.0)]["head_params"]
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Scale\n\nbefore") and text.rstrip().endswith("after")
    assert "| 60 | 6 |" in text and (tmp_path / "scale.png").stat().st_size > 0
