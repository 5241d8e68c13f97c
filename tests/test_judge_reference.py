"""Golden tests of the reference gen-PPL rule (mdlm.judge_reference) on raw judge ids.

The fake judge predicts the same distribution p at every position, so the NLL of a scored id k is
L[k] = -log p[k] whatever its context, and every expected value below is a hand-written sum of L terms.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mdlm.errors import UserError
from mdlm.judge import gen_ppl
from mdlm.judge_reference import check_protocol, chunk_weights, judge_eos_id, pad_rows, score_padded

EOS = 0
P = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
L = [-math.log(0.1), -math.log(0.2), -math.log(0.3), -math.log(0.4)]  # NLL of ids 0..3


class FixedJudge:
    """Logits log p at every position; records the chunks it was called on."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        self.calls.append((ids.clone(), attention.clone()))
        return P.log().float().expand(*ids.shape, 4).clone()


def score(rows, max_length=16, context=1024, batch_size=8, drop_remainder=False, pad_id=EOS, judge=None):
    padded = pad_rows(rows, max_length, pad_id)
    return score_padded(judge or FixedJudge(), padded, EOS, context, batch_size, drop_remainder)


def test_row_starting_with_eos_scores_no_eos_and_eos_in_the_middle_is_context():
    # [EOS 1 2 EOS 3]: position 0 is context; the first EOS is position 0, so the middle EOS (cumsum 2) is
    # not scored; scored: 1, 2, 3
    s = score([[0, 1, 2, 0, 3]])
    assert s.n_tokens.tolist() == [3]
    assert s.nll_sum[0] == pytest.approx(L[1] + L[2] + L[3], rel=1e-6)


def test_first_eos_inside_the_text_is_scored_later_ones_not():
    # [1 EOS 2 EOS]: the first EOS (position 1) is scored, the second is not: scored EOS, 2
    s = score([[1, 0, 2, 0]])
    assert s.n_tokens.tolist() == [2]
    assert s.nll_sum[0] == pytest.approx(L[0] + L[2], rel=1e-6)


def test_padding_with_eos_scores_the_first_pad_of_a_row_without_eos():
    # rows padded to the longest (4): [1 2 EOS EOS] scores 2 and the first pad; [3 3 3 3] scores 3 3 3
    judge = FixedJudge()
    s = score([[1, 2], [3, 3, 3, 3]], judge=judge)
    assert s.n_tokens.tolist() == [2, 3]
    assert s.nll_sum == pytest.approx([L[2] + L[0], 3 * L[3]], rel=1e-6)
    ids, attention = judge.calls[0]
    assert ids.tolist() == [[1, 2, 0, 0], [3, 3, 3, 3]]
    assert attention.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_pad_id_other_than_eos_is_scored_as_text():
    # a tokenizer with its own pad id: the reference counts every pad as a non-EOS token
    s = score([[1], [1, 2, 2]], pad_id=3)
    assert s.n_tokens.tolist() == [2, 2]
    assert s.nll_sum == pytest.approx([2 * L[3], 2 * L[2]], rel=1e-6)


def test_truncation_at_max_length():
    s = score([[1, 2, 3, 1, 2, 3], [2, 2]], max_length=4)
    assert s.truncated.tolist() == [True, False]
    # [1 2 3 1] scores 2 3 1; [2 2 EOS EOS] scores 2 and the first pad
    assert s.n_tokens.tolist() == [3, 2]
    assert s.nll_sum == pytest.approx([L[2] + L[3] + L[1], L[2] + L[0]], rel=1e-6)


def test_several_chunks_are_scored_alone():
    # context 3: [EOS 1 2 | 3 EOS 1 | 2]. Chunk 1 scores 1 2; chunk 2 scores its first EOS (position 1 of
    # the chunk) and 1; the last chunk has one id and nothing to score. 3 (chunk start) is context only.
    judge = FixedJudge()
    s = score([[0, 1, 2, 3, 0, 1, 2]], context=3, judge=judge)
    assert s.n_tokens.tolist() == [4]
    assert s.nll_sum[0] == pytest.approx(L[1] + L[2] + L[0] + L[1], rel=1e-6)
    assert [c[0].tolist() for c in judge.calls] == [[[0, 1, 2]], [[3, 0, 1]]]


def test_remainder_batch_is_kept_by_default_and_dropped_only_on_request():
    rows = [[0, 1], [0, 2], [0, 3], [0, 1, 1], [0, 2, 2]]
    kept = score(rows, batch_size=2)
    assert kept.dropped.tolist() == [False] * 5
    assert kept.n_tokens.tolist() == [1, 1, 1, 2, 2]
    dropped = score(rows, batch_size=2, drop_remainder=True)
    assert dropped.dropped.tolist() == [False, False, False, False, True]
    assert dropped.n_tokens.tolist() == [1, 1, 1, 2, 0]
    # corpus level over the scored rows: exp((L1 + L2 + L3 + 2 L1) / 5)
    keep = ~dropped.dropped
    assert gen_ppl(dropped.nll_sum[keep], dropped.n_tokens[keep]) == pytest.approx(
        math.exp((3 * L[1] + L[2] + L[3]) / 5), rel=1e-6)
    # batch larger than N: one batch of all rows, nothing dropped (batch = min(batch_size, N))
    assert not score(rows, batch_size=8, drop_remainder=True).dropped.any()


def test_corpus_level_aggregation_is_a_ratio_of_sums():
    s = score([[0, 1], [0, 3, 3, 3]])
    assert gen_ppl(s.nll_sum, s.n_tokens) == pytest.approx(math.exp((L[1] + 3 * L[3]) / 4), rel=1e-6)


def test_chunk_weights_formula():
    w = chunk_weights(torch.tensor([[0, 0, 1, 0], [1, 2, 0, 0], [2, 0, 0, 3]]), EOS)
    assert w.tolist() == [[False, True, False], [True, True, False], [True, False, True]]


def test_bad_inputs():
    with pytest.raises(UserError, match="genppl_protocol 'bogus'"):
        check_protocol("bogus")
    with pytest.raises(UserError, match="no EOS id"):
        judge_eos_id("j", SimpleNamespace(eos_token_id=None))
    with pytest.raises(UserError, match="retokenization length"):
        pad_rows([[1]], 1, EOS)
    with pytest.raises(UserError, match="batch size"):
        score([[0, 1]], batch_size=0)
    assert np.all(score([[0, 1]]).truncated == [False])
