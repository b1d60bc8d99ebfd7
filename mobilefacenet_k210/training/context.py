"""What the phases of one run share, as one small object instead of long argument lists."""
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, NamedTuple

from mobilefacenet_k210.training import run_folder


class Monitor(NamedTuple):
    """The metric that picks the best embedding model, and whether higher (``max``) or lower is better."""

    name: str
    mode: str


@dataclasses.dataclass
class RunContext:
    """The run folder, its state and log, and this process's part in writing them.

    ``chief`` is False on the workers of a multi-worker run other than the chief: they compute what
    the chief computes but leave the run folder's files to it.
    """

    run_dir: Path
    state: Dict[str, Any]
    log: logging.Logger
    chief: bool = True
    progress: bool = True

    def save_state(self) -> None:
        """Write ``state.json`` atomically (the chief only)."""
        if self.chief:
            run_folder.save_state(self.run_dir, self.state)
