"""Generated sentences about selected schedules, including an optimizer schedule with no prediction."""

from mdlm import prose


def _row(in_sample):
    return {"schedule": "optimized", "pattern": "L110,H750,L140", "selection": "fit on the search",
            "in_sample": in_sample, "held_out": {"point": 0.214, "ci_low": -0.009, "ci_high": 0.436, "n": 64}}


def test_a_predicted_optimizer_schedule():
    sentence = prose.heldout_sentence(_row({"point": 0.228, "ci_low": None, "ci_high": None, "n": None}))
    assert sentence == ("optimized (`L110,H750,L140`): Δ log gen-PPL vs all-heavy +0.228 predicted by the fit on "
                        "the search, +0.214 [-0.009, +0.436] on the 64 held-out evaluation samples.")


def test_an_optimizer_schedule_without_a_prediction_is_said_so():
    row = _row({"point": None, "ci_low": None, "ci_high": None, "n": None})
    assert "not predicted (no fit on the search)" in prose.heldout_sentence(row)
    assert "| optimized | `L110,H750,L140` | fit on the search | – | +0.214 [-0.009, +0.436] (n = 64) |" in \
        prose.heldout_table([row])


def test_a_search_pick_with_its_selection_interval():
    row = {"schedule": "search-best", "pattern": "LHHHHLHH", "selection": "search samples",
           "in_sample": {"point": 0.05, "ci_low": -0.288, "ci_high": 0.423, "n": 8},
           "held_out": {"point": 0.137, "ci_low": -0.131, "ci_high": 0.405, "n": 32}}
    assert "+0.050 [-0.288, +0.423] on its 8 selection samples" in prose.heldout_sentence(row)
