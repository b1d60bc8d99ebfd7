"""`make bench`'s stage ``pretrained``: `make pretrained` (run or resumed) for three seeds, the figures of the
first and the range of the accuracies over all three."""
from pathlib import Path
from typing import Any, Dict, Tuple

PRETRAINED_SEEDS = (0, 1, 2)
PRETRAINED_KEYS = ("orl_acc_source", "orl_acc_keras", "orl_acc_kmodel", "orl_acc_drop", "memory_total_bytes",
                   "kmodel_bytes", "kpu_mac_share", "cosine_kmodel_mean", "cosine_kmodel_min", "identify_keras",
                   "identify_kmodel", "recover_seconds", "total_seconds")


def pretrained_figures(out: Path, seeds: Tuple[int, ...] = PRETRAINED_SEEDS) -> Dict[str, Any]:
    """`make pretrained` (run or resumed) for each seed, the first into ``out``, the others beside it
    (``OUT_seed<n>``): the first seed's figures, and the range of the accuracies over the seeds."""
    from mobilefacenet_k210.config import PretrainedConfig
    from mobilefacenet_k210.demo.pretrained import run_pretrained

    runs = [run_pretrained(out if i == 0 else out.with_name(f"{out.name}_seed{seed}"), PretrainedConfig(seed=seed))
            for i, seed in enumerate(seeds)]
    figures = {f"pretrained_{key}": runs[0][key] for key in PRETRAINED_KEYS}
    for key in ("orl_acc_keras", "orl_acc_kmodel"):
        values = [run[key] for run in runs]
        figures.update({f"pretrained_{key}_seed_min": min(values), f"pretrained_{key}_seed_max": max(values),
                        f"pretrained_{key}_seeds": dict(zip(map(str, seeds), values))})
    return figures
