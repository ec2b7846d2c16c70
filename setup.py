"""What must be computed at build time (everything else is in pyproject.toml): the dependencies,
and the package list (the four room folders, installed as p2pgolf.node, p2pgolf.pool, ...).

libp2p 0.8.1 pins fastecdsa==2.3.2, which PyPI has only as source for Linux: installing it
needs a C compiler and the GMP headers. p2pgolf never uses what libp2p needs it for (P-256
keys, secio), so it depends on the pure-Python stand-in in shims/fastecdsa instead. A direct
reference must be an absolute file URL (pip reads no relative ones), so it is made here from
this file's own location; pip builds a local directory in place, so that is the clone.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
STAND_IN = HERE / "shims" / "fastecdsa"

DEPENDENCIES = [
    "msgpack>=1.0",
    "pynacl>=1.5",
    "cryptography>=41",
    "base58>=2.1",
    "click>=8.1",
    "rich>=13",
    "platformdirs>=3",
    "numpy>=1.26",
    "scipy>=1.11",  # sparse factorisation of the estimator's lineage model (pool/gmrf.py)
    "trio>=0.25",
    "libp2p==0.8.1",
    f"fastecdsa @ {STAND_IN.as_uri()} ; sys_platform != 'win32'",  # libp2p's pin, met without a C build
    "sentencepiece>=0.2",
    "huggingface_hub>=1.0,<3",  # fetch resumes through file_download.http_get (tqdm_class)
    "psutil>=5.9",
    "zstandard>=0.22",  # artifact compressors the competition's records use (trainer/compression.py)
    "brotli>=1.1",
]

ROOMS = ("node", "pool", "protocol", "trainer")
# Each room folder at the repository's top is installed under the p2pgolf namespace.
PACKAGES = [f"p2pgolf.{name}" for room in ROOMS for name in [room, *(f"{room}.{sub}" for sub in find_packages(room))]]
PACKAGE_DIR = {f"p2pgolf.{room}": room for room in ROOMS}

setup(install_requires=DEPENDENCIES, packages=PACKAGES, package_dir=PACKAGE_DIR)
