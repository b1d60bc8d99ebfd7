"""The evaluation's config (`mfk210 evaluate`: verification and open-set identification) and the gallery
modes that the evaluation, the host's enroll/identify and the board share."""
import dataclasses
from typing import List, Optional

from mobilefacenet_k210.config.loader import ConfigError, check_choice, check_positive

GALLERY_MODES = ("max", "mean")
"""How a person's enrolled photos enter the gallery: ``max``, one entry per photo, a person scored by its
best entry (what the board script does with several entries of one name); ``mean``, one entry per person,
the normalized mean. "max" measured the lower FNIR at a fixed FPIR (docs/identification.md)."""
DEFAULT_GALLERY_MODE = GALLERY_MODES[0]
UNRECORDED_GALLERY_MODE = "mean"
"""The mode of a gallery, identification result or threshold that records none: written before modes
existed (or a gallery the board's button wrote), when every gallery held one mean per person."""


def recorded_gallery_mode(mode: Optional[str]) -> str:
    """``mode`` as recorded in a file, :data:`UNRECORDED_GALLERY_MODE` when the file has none."""
    return mode or UNRECORDED_GALLERY_MODE


@dataclasses.dataclass
class EvalConfig:
    """`mfk210 evaluate`: which models, on which verification sets, and where the report goes.

    Sets: InsightFace ``bins``, a ``pairs`` file (paths relative to ``root``), an identity-per-folder
    ``folder`` (at most ``max_positive_pairs`` same-person pairs and as many others, drawn with
    ``seed``), or precomputed ``embeddings`` + ``issame`` .npy files. ``compare`` names two models
    whose accuracies, drop and embedding cosine agreement are reported. ``flip`` sums each crop's
    embedding with its mirror's (InsightFace's test-time flip). ``out`` receives the PNGs and the
    Markdown table; ``json`` the full results. ``identification`` runs open-set 1:N identification on
    ``folder`` instead (``evaluate/identification.py``): ``enroll_photos`` photos per enrolled person,
    entered as ``gallery_mode`` (one of ``GALLERY_MODES``), thresholds also for a gallery of
    ``gallery_size`` people. ``trust_model_code`` loads model files that carry code (``model/io.py``).
    """

    models: List[str] = dataclasses.field(default_factory=list)
    bins: List[str] = dataclasses.field(default_factory=list)
    pairs: Optional[str] = None
    root: Optional[str] = None
    folder: Optional[str] = None
    aligned: bool = False
    embeddings: Optional[str] = None
    issame: Optional[str] = None
    compare: List[str] = dataclasses.field(default_factory=list)
    flip: bool = False
    batch_size: int = 64
    nfolds: int = 10
    max_positive_pairs: int = 3000
    seed: int = 0
    json: Optional[str] = None
    out: Optional[str] = None
    save_bin: Optional[str] = None
    identification: bool = False
    enroll_photos: int = 5
    gallery_size: Optional[int] = None
    gallery_mode: str = DEFAULT_GALLERY_MODE
    trust_model_code: bool = False

    def validate(self, where: str = "evaluate") -> None:
        """Refuse fold counts, sizes and gallery modes the protocol cannot use, naming the field."""
        check_choice(self.gallery_mode, GALLERY_MODES, f"{where}.gallery_mode")
        if self.nfolds < 2:
            raise ConfigError(f"{where}.nfolds {self.nfolds}: at least 2 folds")
        check_positive(where, batch_size=self.batch_size, max_positive_pairs=self.max_positive_pairs,
                  enroll_photos=self.enroll_photos)
        if self.gallery_size is not None:
            check_positive(where, gallery_size=self.gallery_size)
        if self.compare and len(self.compare) != 2:
            raise ConfigError(f"{where}.compare: name exactly two models")
