"""PSI's pieces: quantile edges computed from a few ranks of sorted values are np.quantile's, to the bit."""

from __future__ import annotations

import numpy as np
import pytest

from batchml.data.stats import (
    population_stability_index,
    psi_bin_counts,
    psi_bin_edges,
    psi_bin_edges_sorted,
    psi_from_counts,
)


@pytest.mark.parametrize("kind", ["uniform", "three values", "wide normal", "one value"])
def test_edges_from_sorted_ranks_are_np_quantiles_at_every_size(kind: str) -> None:
    rng = np.random.default_rng(11)
    for rows in [*range(1, 130), 1_000, 12_345, 99_991]:
        values = {
            "uniform": lambda n: rng.random(n),
            "three values": lambda n: rng.integers(0, 3, n).astype(float),
            "wide normal": lambda n: rng.normal(size=n) * 1e6,
            "one value": lambda n: np.full(n, 0.25),
        }[kind](rows)
        ordered = np.sort(values)
        asked: list[int] = []

        def values_at(
            ranks: np.ndarray, ordered: np.ndarray = ordered, asked: list[int] = asked
        ) -> np.ndarray:
            asked.extend(ranks.tolist())
            return ordered[ranks]

        edges = psi_bin_edges_sorted(rows, values_at)
        assert np.array_equal(edges, psi_bin_edges(values)), rows
        assert len(asked) <= 22  # two neighbours per quantile at most


def test_psi_from_pieces_is_population_stability_index() -> None:
    rng = np.random.default_rng(12)
    expected, actual = rng.beta(2, 5, 5000), rng.beta(2, 4, 3000)
    edges = psi_bin_edges(expected)
    counts = psi_bin_counts(edges, expected), psi_bin_counts(edges, actual)
    assert psi_from_counts(counts[0], 5000, counts[1], 3000) == population_stability_index(expected, actual)
