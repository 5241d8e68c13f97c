"""Disjoint sample-index ranges: selection never sees the samples that evaluate what it selected.

All sampling uses the profile's `sample.seed`; the sampler's random numbers are keyed by (seed, sample_index),
so samples with different indices are independent draws. The ranges (half-open, in sample indices):

- evaluation: [0, sample.num_samples) — every schedule the pipeline samples and scores (`mdlm sample`), so
  every number reported for a shipped or selected schedule;
- search: [search.first_index, search.first_index + search.num_samples) — the placements `mdlm search` ranks;
- swap sensitivity: [importance.swap_first_index, + swap samples) — the one-segment swaps of `mdlm importance`.

The optimizer calibrates on the search and the swap profile only (selection data). See docs/claims.md.
"""

from __future__ import annotations

from collections.abc import Mapping


def overlap_message(ranges: Mapping[str, tuple[int, int]]) -> str | None:
    """None when the named half-open ranges {label: (start, stop)} are pairwise disjoint, else the first clash."""
    items = sorted(ranges.items(), key=lambda kv: kv[1])
    for (a, (a0, a1)), (b, (b0, b1)) in zip(items, items[1:], strict=False):
        if b0 < a1:
            return (f"sample-index ranges overlap: {a} [{a0}, {a1}) and {b} [{b0}, {b1}); selection and "
                    f"evaluation must use disjoint sample indices")
    return None
