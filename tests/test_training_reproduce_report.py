"""The reproduce report: the tie rule, the ordering against the paper's, and the files it writes."""
from __future__ import annotations

from types import SimpleNamespace

from training.reproduce_report import Run, Stat, compare, ordering, paper_agreement, stat, write_report


def test_a_difference_smaller_than_the_spread_is_a_tie():
    assert compare(Stat(0.80, 0.01, 3), Stat(0.795, 0.002, 3)) == "="  # 0.005 < 0.01
    assert compare(Stat(0.80, 0.001, 3), Stat(0.79, 0.002, 3)) == ">"
    assert compare(Stat(0.78, 0.001, 3), Stat(0.79, 0.002, 3)) == "<"
    assert compare(Stat(0.80, 0.0, 1), Stat(0.70, 0.0, 1)) == "?"  # one seed: no spread, nothing judged
    assert compare(Stat(0.80, 0.0, 1), Stat(0.70, 0.01, 3)) == "?"
    s = stat([0.70, 0.72, float("nan")])  # a failed seed does not enter the mean
    assert s.n == 2 and abs(s.mean - 0.71) < 1e-12 and abs(s.std - 0.0141421) < 1e-6


def test_ordering_joins_ties_and_the_agreement_counts_pairs_of_table_4():
    st = {"twin": Stat(0.80, 0.001, 3), "sim_soft": Stat(0.7995, 0.002, 3), "sim_hard": Stat(0.81, 0.001, 3),
          "avg_pooling": Stat(0.70, 0.001, 3)}
    assert ordering(st) == "SIM Hard > TWIN ≈ SIM Soft > Avg-Pooling"
    counts, rev = paper_agreement(st)
    # pairs in the paper's order: twin>sim_soft (tie), twin>sim_hard (reversed), twin>avg (agree),
    # sim_soft>sim_hard (reversed), sim_soft>avg (agree), sim_hard>avg (agree)
    assert counts == {"agree": 3, "tie": 1, "reversed": 2, "unjudged": 0}
    assert rev == ["SIM Hard > TWIN", "SIM Hard > SIM Soft"]
    one = {m: Stat(x.mean, 0.0, 1) for m, x in st.items()}  # the same means from one seed each
    assert ordering(one) == "SIM Hard ? TWIN ? SIM Soft ? Avg-Pooling"
    assert paper_agreement(one) == ({"agree": 0, "tie": 0, "reversed": 0, "unjudged": 6}, [])


def test_the_report_has_every_model_the_references_the_curve_and_the_failures(tmp_path):
    runs = []
    for seed, (a, b) in enumerate([(0.80, 0.75), (0.81, 0.74)]):
        runs.append(Run("d", "twin", seed, {"auc": a, "gauc": a - 0.05, "consistency_sum": 90.0}, 10.0, 5,
                        curve={r: {10: 9.0, 100: 90.0} for r in ("sum", "per_head", "max")} if seed == 0 else None))
        runs.append(Run("d", "sim_hard", seed, {"auc": b, "gauc": b - 0.05}, 5.0, 5))
    runs.append(Run("d", "eta", 0, {}, 1.0, 0, error="RuntimeError: boom"))
    ref = SimpleNamespace(name="oracle (noiseless logit, ceiling)", test={"auc": 0.9, "gauc": 0.85})
    write_report(tmp_path, [SimpleNamespace(name="d", refs=[ref])], runs, SimpleNamespace(seeds=(0, 1), users=10,
                 preset="tiny", settings=SimpleNamespace(arch={})), 60.0)
    text = (tmp_path / "table.md").read_text()
    assert "| TWIN | 0.7962 / 0.7336 | 0.8050 ± 0.0071 |" in text
    assert "| SIM Hard | 0.7901 / 0.7224 | 0.7450 ± 0.0071 |" in text and "worse (-0.0600)" in text
    assert "| 10 | 0/2 |" in text  # mean training seconds, early-stopped runs of all
    assert "*reference: oracle (noiseless logit, ceiling)* | - | 0.9000" in text
    assert "| d | TWIN | 9.0 | 90.0 | 90.0 | 90.0 | 94 |" in text
    assert "Seeds [0, 1]." in text and "(one seed)" not in text
    assert "* eta on d, seed 0: RuntimeError: boom" in text
    assert (tmp_path / "consistency.png").stat().st_size > 1000
