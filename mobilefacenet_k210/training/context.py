"""What the phases of one run share, as one small object instead of long argument lists."""
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

from mobilefacenet_k210.training import run_folder


class Monitor(NamedTuple):
    """The metric that picks the best embedding model, and whether higher (``max``) or lower is better."""

    name: str
    mode: str


@dataclasses.dataclass
class RunContext:
    """The run folder, its state and log, and where this process writes.

    ``run_dir`` is the run folder, read by every worker (its config, state, backups). ``write_dir``
    is where this process writes its outputs: the run folder itself for the chief (and for a run
    that is not multi-worker), a temporary folder of its own for another worker of a cluster, which
    computes what the chief computes but leaves the run folder to it.
    """

    run_dir: Path
    state: Dict[str, Any]
    log: logging.Logger
    chief: bool = True
    progress: bool = True
    write_dir: Optional[Path] = None

    def __post_init__(self) -> None:
        if self.write_dir is None:
            self.write_dir = self.run_dir

    @property
    def out(self) -> Path:
        """Where this process writes (``write_dir``, set)."""
        assert self.write_dir is not None
        return self.write_dir

    def save_state(self) -> None:
        """Write ``state.json`` atomically where this process writes."""
        run_folder.save_state(self.out, self.state)
