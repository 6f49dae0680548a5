import pytest
import torch

from diffguide.reference import GaussianMixture

# Test tensors are small: one thread avoids OpenMP barrier stalls (40x slower on a shared 2-core box).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gmm() -> GaussianMixture:
    return GaussianMixture.example_2d()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
