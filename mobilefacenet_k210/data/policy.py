"""Per-identity work of the builder: the balancing policy and the train/val split.

Pure functions of an identity's list of aligned sources, the config and the seed, shared by the
local and Beam runners. The split is identity-stratified (each identity gives about
``val_fraction`` of its source photos to val) and by source photo, so an augmented copy always
lands in the same split as its original.
"""
import math
from typing import List, Sequence, Set, Tuple

import numpy as np

from mobilefacenet_k210.config import POLICY_PRESETS, PolicyConfig, PolicyRule, check_choice
from mobilefacenet_k210.data.augment import ORIGINAL, stable_seed


def preset(name: str) -> PolicyConfig:
    """``seed``: the seed's balancing (the default rules); ``none``: keep every face, no augmentation."""
    check_choice(name, POLICY_PRESETS, "policy")
    if name == "none":
        return PolicyConfig(name="none", rules=[PolicyRule(more_than=-1, action="keep")])
    return PolicyConfig()


def choose_rule(count: int, policy: PolicyConfig) -> Tuple[int, PolicyRule]:
    """Index and rule applying to an identity with ``count`` aligned faces (first match in order);
    an identity no rule matches is dropped."""
    for i, rule in enumerate(policy.rules):
        if count > rule.more_than:
            return i, rule
    return -1, PolicyRule(more_than=count, action="drop")


def plan_identity(identity: str, sources: Sequence[str], policy: PolicyConfig, seed: int) -> List[Tuple[str, str]]:
    """The (source, tag) records an identity yields: which faces are kept and which copies are added.

    ``sources`` are the identity's aligned faces (any order; sorted here so the result does not
    depend on it). An empty list means the identity is dropped.
    """
    ordered = sorted(sources)
    _, rule = choose_rule(len(ordered), policy)
    if rule.action == "drop":
        return []
    if rule.action == "sample" and len(ordered) > rule.sample:
        rng = np.random.default_rng(stable_seed(seed, identity, "sample"))
        pick = np.sort(rng.choice(len(ordered), size=rule.sample, replace=False))
        ordered = [ordered[i] for i in pick]
    tags = [ORIGINAL] + list(rule.augment)
    return [(src, tag) for src in ordered for tag in tags]


def split_sources(identity: str, sources: Sequence[str], val_fraction: float, seed: int) -> Set[str]:
    """The sources of one identity that go to val: ``floor(n*f + u)`` of them (u uniform, seeded per
    identity, so the expected total is ``f`` of all sources), at most ``n - 1`` (every identity keeps
    a training face)."""
    ordered = sorted(set(sources))
    n = len(ordered)
    if val_fraction <= 0 or n < 2:
        return set()
    rng = np.random.default_rng(stable_seed(seed, identity, "split"))
    k = min(n - 1, int(math.floor(n * val_fraction + rng.random())))
    return {ordered[i] for i in rng.permutation(n)[:k]}
