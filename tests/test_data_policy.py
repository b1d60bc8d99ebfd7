"""The per-identity policy, the augmentations and the split, on arrays (no detector)."""
import numpy as np
import pytest

from mobilefacenet_k210.config import PolicyRule
from mobilefacenet_k210.data import augment, policy, writer
from mobilefacenet_k210.data.builder import load_build_config
from mobilefacenet_k210.data.stages import PhotoResult, identity_records


def _sources(n):
    return [f"person/{i:04d}.jpg" for i in range(n)]


@pytest.mark.parametrize("n,records,tags", [
    (10, 0, set()),
    (40, 160, {"original", "opening", "gaussian", "saltpepper"}),
    (100, 200, {"original", "opening"}),
    (250, 250, {"original"}),
    (400, 350, {"original"}),
])
def test_seed_policy_branches(n, records, tags):
    plan = policy.plan_identity("person", _sources(n), policy.preset("seed"), seed=0)
    assert len(plan) == records
    assert {t for _, t in plan} == tags
    if records:
        originals = [s for s, t in plan if t == "original"]
        assert len(originals) == len(set(originals)) == min(n, 350)
        for tag in tags:  # every kept face has exactly one copy of each augmentation
            assert sorted(s for s, t in plan if t == tag) == sorted(originals)


def test_policy_boundaries_and_none():
    seed = policy.preset("seed")
    counts = {n: len(policy.plan_identity("p", _sources(n), seed, 0)) for n in (30, 31, 90, 91, 200, 201, 350, 351)}
    assert counts == {30: 0, 31: 124, 90: 360, 91: 182, 200: 400, 201: 201, 350: 350, 351: 350}
    none = policy.preset("none")
    assert len(policy.plan_identity("p", _sources(3), none, 0)) == 3
    assert len(policy.plan_identity("p", _sources(400), none, 0)) == 400


def test_sampling_is_seeded_and_order_free():
    seed = policy.preset("seed")
    a = policy.plan_identity("p", _sources(400), seed, 1)
    b = policy.plan_identity("p", list(reversed(_sources(400))), seed, 1)
    c = policy.plan_identity("p", _sources(400), seed, 2)
    assert a == b and a != c


def test_policy_is_a_config():
    cfg = load_build_config(overrides=["policy.rules.0.sample=300", "policy.rules.4.more_than=5",
                                       "policy.rules.4.action=keep"])
    assert len(policy.plan_identity("p", _sources(400), cfg.policy, 0)) == 300
    assert len(policy.plan_identity("p", _sources(10), cfg.policy, 0)) == 10
    assert len(policy.plan_identity("p", _sources(4), cfg.policy, 0)) == 0  # no rule matches: dropped
    with pytest.raises(ValueError, match="action"):
        type(cfg.policy)(rules=[PolicyRule(action="explode")]).validate()
    with pytest.raises(ValueError, match="augment"):
        type(cfg.policy)(rules=[PolicyRule(augment=["blur"])]).validate()
    with pytest.raises(ValueError, match="action"):
        load_build_config(overrides=["policy.rules.0.action=explode"])


def test_split_is_stratified_and_keeps_copies_together():
    sources = _sources(60)
    total = sum(len(policy.split_sources(f"id{i}", sources, 0.05, 0)) for i in range(400))
    assert abs(total - 0.05 * 60 * 400) < 0.1 * 0.05 * 60 * 400  # expected fraction overall
    assert len(policy.split_sources("x", _sources(2), 0.9, 0)) == 1  # an identity keeps a training face
    assert policy.split_sources("x", _sources(50), 0.0, 0) == set()

    crops = {s: np.full((112, 112, 3), i, np.uint8) for i, s in enumerate(_sources(40))}
    cfg = load_build_config(val_fraction=0.25)
    out = identity_records("person", [PhotoResult(s, c) for s, c in crops.items()], cfg)
    assert len(out.records) == 160
    split_of = {}
    for split, source, tag, _ in out.records:
        assert split_of.setdefault(source, split) == split  # copies share their original's split
    assert 5 <= sum(1 for s in split_of.values() if s == "val") <= 15


def test_identity_records_deterministic():
    rng = np.random.default_rng(0)
    results = [PhotoResult(s, rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for s in _sources(35)]
    cfg = load_build_config()
    a = identity_records("p", results, cfg)
    b = identity_records("p", list(reversed(results)), cfg)
    assert a.records == b.records and len(a.records) == 140
    c = identity_records("p", results, load_build_config(seed=1))
    assert sorted(r[3] for r in a.records) != sorted(r[3] for r in c.records)
    dropped = identity_records("p", results[:30] + [PhotoResult("bad.jpg", None, "no face")], cfg)
    assert dropped.dropped and dropped.faces == 30 and dropped.rejected == [("bad.jpg", "no face")]


def test_opening_removes_bright_specks_and_never_brightens():
    img = np.full((112, 112, 3), 100, np.uint8)
    img[50, 50] = 255  # a one-pixel speck
    img[20:40, 20:40] = 200  # a large bright patch survives
    out = augment.opening(img, 3)
    assert out[50, 50].tolist() == [100, 100, 100]
    assert (out[25:35, 25:35] == 200).all()
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    opened = augment.opening(noisy, 3)
    assert (opened <= noisy).all() and (opened != noisy).mean() > 0.5
    assert np.array_equal(augment.opening(opened, 3), opened)  # idempotent


def test_gaussian_noise_has_the_configured_spread():
    img = np.full((112, 112, 3), 128, np.uint8)
    out = augment.gaussian_noise(img, var=0.005, seed=3)
    diff = out.astype(float) - 128
    assert abs(diff.mean()) < 0.5
    assert abs(diff.std() - np.sqrt(0.005) * 255) < 1.0
    assert np.array_equal(out, augment.gaussian_noise(img, 0.005, 3))
    assert not np.array_equal(out, augment.gaussian_noise(img, 0.005, 4))


def test_salt_and_pepper_sets_the_configured_fraction():
    img = np.full((112, 112, 3), 128, np.uint8)
    out = augment.salt_pepper(img, amount=0.02, seed=5)
    changed = out != 128
    assert abs(changed.mean() - 0.02) < 0.004
    assert set(np.unique(out[changed]).tolist()) == {0, 255}
    assert np.array_equal(out, augment.salt_pepper(img, 0.02, 5))


def test_augment_dispatch():
    img = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert augment.augment(img, "original", 0) is img
    for tag in augment.AUGMENTATIONS:
        assert not np.array_equal(augment.augment(img, tag, 0), img)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.augment(img, "blur", 0)


def test_shard_counts_and_order():
    assert writer.shard_counts(0, 10) == []
    assert writer.shard_counts(25, 10) == [9, 8, 8]
    assert sum(writer.shard_counts(10001, 10000)) == 10001
    names = [f"n{i}" for i in range(20)]
    assert sorted(writer.shard_order(names, 0)) == sorted(names) != writer.shard_order(names, 0)
    assert writer.shard_order(names, 0) == writer.shard_order(list(reversed(names)), 0)
