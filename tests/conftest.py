import random
from pathlib import Path

import pytest
import torch

CONF_DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "config.yaml"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


def ragged_mask(lengths, t):
    """Prefix mask [len(lengths), t] with the given numbers of valid positions."""
    return torch.tensor([[i < n for i in range(t)] for n in lengths])


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One embedded-model cache for the session: tiny models are built once and reused by every test."""
    return tmp_path_factory.mktemp("cache")
