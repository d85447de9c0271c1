"""The seeded tiny model's stage outputs equal the stored golden tensors (regenerate: ``python tests/golden.py``)."""

from __future__ import annotations

import torch
from golden import GOLDEN, golden_outputs
from safetensors.torch import load_file


def test_stage_outputs_match_golden_tensors(tiny_root):
    expected = load_file(str(GOLDEN))
    actual = golden_outputs(tiny_root)
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
