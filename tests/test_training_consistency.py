"""GSU-ESU consistency readings on constructed attention weights whose answer is known."""
import torch

from training.consistency import oracle_hits, top_positions


def test_ties_rank_by_position_as_the_gsu_does():
    score = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert top_positions(score, 3).tolist() == [[1, 2, 4]]
    assert top_positions(score, 4).tolist() == [[1, 2, 4, 3]]


def _weights():
    # B=1, A=2 heads, C=1, L=6. head 0 attends to 0, 1, 2; head 1 to 3, 4 (and 0 a little)
    w = torch.zeros(1, 2, 1, 6)
    w[0, 0, 0, :3] = torch.tensor([0.5, 0.3, 0.2])
    w[0, 1, 0, [0, 3, 4]] = torch.tensor([0.1, 0.6, 0.3])
    return w


def test_the_readings_on_a_known_case():
    w, mask = _weights(), torch.ones(1, 6, dtype=torch.bool)
    sel = torch.tensor([[[3, 1]]])  # the GSU kept behaviors 3 and 1
    # sum over heads: 0 (0.6), 3 (0.6), 1 (0.3), 4 (0.3) -> top-2 = {0, 3} (tie at 0.6 -> position 0 first)
    assert oracle_hits(w, sel, mask, 2, "sum").tolist() == [[1.0]]
    # per head: head 0's top-2 {0, 1} holds 1; head 1's {3, 4} holds 3 -> mean 1
    assert oracle_hits(w, sel, mask, 2, "per_head").tolist() == [[1.0]]
    # max over heads: 3 (0.6), 0 (0.5) -> holds 3
    assert oracle_hits(w, sel, mask, 2, "max").tolist() == [[1.0]]
    assert oracle_hits(w, torch.tensor([[[0, 3]]]), mask, 2, "sum").tolist() == [[2.0]]


def test_padding_and_unselected_slots_never_count():
    w = _weights()
    mask = torch.tensor([[True, True, False, False, False, False]])  # only 0 and 1 are real
    sel = torch.tensor([[[1, -1, -1]]])
    assert oracle_hits(w, sel, mask, 3, "sum").tolist() == [[1.0]]  # oracle = {0, 1}: 2 valid only
    assert oracle_hits(w, torch.tensor([[[-1, -1, -1]]]), mask, 3, "sum").tolist() == [[0.0]]
