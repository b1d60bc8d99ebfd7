"""Every target of the project, once: `make bench`, the demo report and the README's figures read this table.

A target is a bound on one figure: a fixed number (``kmodel_bytes <= 1,500,000``), a factor of
another figure measured in the same run (``builder_aligned_img_per_s >= 3 x builder_img_per_s_2w``),
or a tolerance around a reference (the paper's parameter count +-10%).
"""
import dataclasses
import operator
from typing import Any, Dict, Mapping, Optional

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "==": operator.eq}


@dataclasses.dataclass(frozen=True)
class Target:
    """``figure OP value`` (times ``relative_to``'s figure when given), or ``within`` a fraction of ``reference``.

    ``text`` is how reports state it; ``unit`` formats the bound there (``pct``, ``int`` or plain).
    """

    op: str
    value: float
    note: str = ""
    relative_to: Optional[str] = None
    reference: Optional[float] = None
    unit: str = ""

    def _shown(self, value: float) -> str:
        if self.unit == "pct":
            return f"{100 * value:g}%"
        if self.unit == "int":
            return f"{int(value):,}"
        return f"{value:g}"

    @property
    def text(self) -> str:
        """The target as reports and the README state it, e.g. ``>= 95%`` or ``0.99M +-10% (paper)``."""
        if self.op == "within":
            core = f"{self.reference / 1e6:g}M +-{100 * self.value:g}%"
        elif self.relative_to:
            core = f"{self.op} {self._shown(self.value)}x {self.relative_to}"
        else:
            core = f"{self.op} {self._shown(self.value)}"
        return f"{core} ({self.note})" if self.note else core

    def met(self, figure: str, figures: Mapping[str, Any]) -> bool:
        """Whether ``figures[figure]`` meets the target (``figures`` holds any figure it is relative to)."""
        value = float(figures[figure])
        if self.op == "within":
            return abs(value / float(self.reference) - 1) <= self.value
        bound = self.value * (float(figures[self.relative_to]) if self.relative_to else 1.0)
        return _OPS[self.op](value, bound)


TARGETS: Dict[str, Target] = {
    "params": Target("within", 0.10, "paper", reference=0.99e6),
    "madds": Target("within", 0.10, "paper", reference=221e6),
    "kmodel_bytes": Target("<=", 1_500_000, "default model, nncase 1.1", unit="int"),
    "kmodel_version": Target("==", 5),
    "kpu_mac_share": Target(">=", 0.98, unit="pct"),
    "cosine_kmodel_mean": Target(">=", 0.985),
    "cosine_kmodel_min": Target(">=", 0.95),
    "distill_default_kmodel_bytes": Target("<=", 1_500_000, "distilled student, width 1.0", unit="int"),
    "distill_default_kmodel_version": Target("==", 5),
    "distill_default_kpu_mac_share": Target(">=", 0.98, unit="pct"),
    "distill_default_cosine_kmodel_mean": Target(">=", 0.985),
    "builder_speedup_2w": Target(">=", 1.8, "on 2 cores"),
    "builder_aligned_img_per_s": Target(">=", 3, "aligned crops skip MTCNN", relative_to="builder_img_per_s_2w"),
    "rec_records_per_s": Target(">=", 2000, "RecordIO build, 2 workers, 2 cores"),
    "rec_over_folder": Target(">=", 3, "RecordIO vs a folder of the same JPEGs"),
    "rec_ms1m_hours": Target("<=", 1, "MS1M-ArcFace's 5.8M photos at the measured rate, 2 cores"),
    "yunet_over_plain_mtcnn": Target(">=", 8, "YuNet builder, 2 workers, vs one MTCNN loop, same photos, 2 cores"),
    "tfdata_over_train": Target(">=", 3),
    "shuffle_mixing": Target(">", 1, "more distinct labels per batch than the seed's stream",
                             relative_to="shuffle_mixing_seed_stream"),
    "orl_acc_keras": Target(">=", 0.95, unit="pct"),
    "orl_acc_keras_yunet": Target(">=", 1, "no worse than on MTCNN's crops", relative_to="orl_acc_keras"),
    "orl_acc_drop": Target("<=", 0.005, "kmodel within half a point of Keras"),
    "tests_seconds": Target("<=", 1500, "on 2 cores"),
    "demo_seconds": Target("<=", 600, "whole demo, 2 cores without AVX-512"),
    "gpu_mixed_over_fp32": Target(">", 1, "mixed precision pays on the GPU"),
    "pretrained_orl_acc_kmodel": Target(">=", 0.98, "make pretrained, held-out pairs, flip", unit="pct"),
    "pretrained_memory_total_bytes": Target("<=", 2_600_000, "nncase memory total: fits beside CanMV", unit="int"),
    "pretrained_kpu_mac_share": Target(">=", 0.98, unit="pct"),
    "pretrained_total_seconds": Target("<=", 900, "make pretrained, 2 cores"),
}
