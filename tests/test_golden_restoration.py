"""The restoration core reproduces its pinned reference numbers (tests/golden_restoration.py)."""

import pytest
import torch
from golden_restoration import GOLDEN, compute


@pytest.fixture(scope="module")
def results() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    try:
        return compute()
    finally:
        torch.set_num_threads(threads)


def test_every_pinned_number_is_reproduced(results: dict[str, torch.Tensor]) -> None:
    golden = torch.load(GOLDEN)
    assert sorted(results) == sorted(golden)
    drifted = {}
    for name, ref in golden.items():
        got = results[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        if not torch.equal(got, ref):
            drifted[name] = float((got.double() - ref.double()).abs().max())
    assert not drifted, f"numbers moved (max abs difference): {drifted}"
