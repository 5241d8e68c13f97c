"""`bench.compare_forward`: loading another checkout's folded forward beside this one's."""

from pathlib import Path

import pytest
import torch

from bench import compare_forward
from mdlm.folded import FoldedDiT

ROOT = Path(__file__).resolve().parents[1]


def test_this_checkout_against_itself_gives_the_same_logits(toy_dit):
    other = compare_forward.load_other(ROOT)
    assert other.FoldedDiT is not FoldedDiT  # a module of its own, not this checkout's import
    model = toy_dit(2, 0, 64, 16)  # random weights: logits that differ by position (adaLN-zero's are uniform)
    call = (torch.randint(2, 60, (3, 16)), torch.arange(3), torch.randint(0, 16, (3,)))
    assert torch.equal(FoldedDiT(model)(*call), other.FoldedDiT(model)(*call))


def test_a_folder_without_the_folded_forward_is_a_one_line_exit(tmp_path):
    with pytest.raises(SystemExit, match="no folded forward in that checkout"):
        compare_forward.load_other(tmp_path)
