"""The fast clustering kernel must return exactly what the paper's loop returns, for every method and rule."""
from __future__ import annotations

import numpy as np
import pytest

from cem_pipeline.bench.synthetic_hashes import (
    gini,
    heavy_tailed_sizes,
    near_duplicate_hashes,
)
from cem_pipeline.dedup.kernel import (
    cluster_distinct,
    cluster_ordered,
    group_rng,
    max_distance,
)
from cem_pipeline.dedup.reference import reference_clusters

METHODS = [("auto", None), ("scan", None), ("mih", 4), ("mih", 5), ("mih", 7), ("mih", 13)]


def assert_same_as_reference(hashes: np.ndarray, t: int) -> None:
    expected = reference_clusters(hashes, t)
    for method, m in METHODS:
        got = cluster_ordered(hashes, t, method, m)
        np.testing.assert_array_equal(got.leader, expected.leader, err_msg=f"{method} m={m} t={t}")
        np.testing.assert_array_equal(got.distance, expected.distance, err_msg=f"{method} m={m} t={t}")


@pytest.fixture(scope="module")
def real_hashes(shared_em) -> np.ndarray:
    """dHashes of 3000 real EM tiles (cdeep3m, ISBI, SNEMI3D; 32-px offsets), full of real near-duplicates."""
    from cem_pipeline.bench.em_data import real_em_patches
    from cem_pipeline.ingest.hashing import dhash_patches

    return dhash_patches(real_em_patches(shared_em, 3000))


@pytest.mark.shared_data
@pytest.mark.parametrize("rule", ["le", "lt"])
@pytest.mark.parametrize("distance", [0, 4, 8, 12, 20])
def test_real_hashes_match_reference(real_hashes, distance, rule):
    order = group_rng(0, f"real-{distance}-{rule}").permutation(real_hashes.size)
    assert_same_as_reference(real_hashes[order], max_distance(distance, rule))


@pytest.mark.shared_data
def test_real_hashes_hold_near_duplicates(real_hashes):
    """Overlapping tiles of real slices are near-duplicates at the paper's cutoff: the test data has structure."""
    clusters = cluster_ordered(real_hashes, 12)
    assert clusters.n_clusters < 0.8 * real_hashes.size
    assert (clusters.distance[clusters.leader != np.arange(real_hashes.size)] > 0).any()


def _chain(start: int, length: int) -> np.ndarray:
    """h_k differs from h_0 in the k lowest bits: every step is distance 1, the ends are far apart."""
    return np.array([start ^ ((1 << k) - 1) for k in range(length)], dtype=np.uint64)


ADVERSARIAL = {
    "chain": _chain(0xF0F0F0F0F0F0F0F0, 64),
    "chain_reversed": _chain(0x0123456789ABCDEF, 64)[::-1].copy(),
    # Ties: many hashes at exactly distance 12 and 13 of the first, and of each other in mixed ways.
    "ties": np.array([0] + [((1 << 12) - 1) << s for s in range(0, 52, 4)]
                     + [((1 << 13) - 1) << s for s in range(0, 51, 3)], dtype=np.uint64),
    "all_identical": np.full(500, 0xDEADBEEFCAFEF00D, dtype=np.uint64),
    "all_distinct": np.array([0, 2**64 - 1, 0x00000000FFFFFFFF, 0xFFFFFFFF00000000,
                              0x5555555555555555, 0xAAAAAAAAAAAAAAAA], dtype=np.uint64),
    "identical_blocks_and_walks": np.concatenate(
        [np.repeat(np.uint64(7), 50), near_duplicate_hashes(400, np.random.default_rng(3)), np.repeat(np.uint64(7), 50)]),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("t", [-1, 0, 1, 11, 12, 13, 31, 63, 64])
def test_adversarial_cases_match_reference(name, t):
    assert_same_as_reference(ADVERSARIAL[name], t)


def test_synthetic_group_matches_reference_at_mih_scale():
    """Big enough (> MIN_MIH_SIZE distinct) that "auto" really picks mih for small t and scan for t = 12."""
    hashes = near_duplicate_hashes(6000, np.random.default_rng(11))
    for t in (2, 6, 12):
        assert_same_as_reference(hashes, t)
    distinct = np.unique(hashes)
    assert cluster_distinct(distinct, 2)[1].startswith("mih")


def test_degenerate_cutoffs():
    hashes = near_duplicate_hashes(300, np.random.default_rng(5))
    everything = cluster_ordered(hashes, 64)
    assert everything.n_clusters == 1 and (everything.leader == 0).all()
    nothing = cluster_ordered(hashes, max_distance(0, "lt"))
    assert nothing.n_clusters == hashes.size and (nothing.distance == 0).all()
    exact = cluster_ordered(hashes, 0)
    assert exact.n_clusters == np.unique(hashes).size
    assert cluster_ordered(np.empty(0, np.uint64), 12).leader.size == 0


def test_rules_differ_exactly_at_the_cutoff():
    """Two hashes 12 bits apart: one cluster under the paper's code (<= 12), two under its text (< 12)."""
    pair = np.array([0, (1 << 12) - 1], dtype=np.uint64)
    assert max_distance(12, "le") == 12 and max_distance(12, "lt") == 11
    assert cluster_ordered(pair, max_distance(12, "le")).leader.tolist() == [0, 0]
    assert cluster_ordered(pair, max_distance(12, "lt")).leader.tolist() == [0, 1]
    with pytest.raises(ValueError, match="rule"):
        max_distance(12, "leq")


def test_leader_is_first_remaining_and_order_matters():
    """a-b and b-c are within 12, a-c is not: a first gives {a, b} {c}; b first gives {b, a, c}."""
    a, b, c = np.uint64(0), np.uint64((1 << 8) - 1), np.uint64((1 << 16) - 1)
    assert cluster_ordered(np.array([a, b, c]), 12).leader.tolist() == [0, 0, 2]
    assert cluster_ordered(np.array([b, a, c]), 12).leader.tolist() == [0, 0, 0]


def test_group_rng_is_stable_and_keyed():
    first = group_rng(7, '[["dataset", "a"]]').permutation(1000)
    np.testing.assert_array_equal(first, group_rng(7, '[["dataset", "a"]]').permutation(1000))
    assert not np.array_equal(first, group_rng(7, '[["dataset", "b"]]').permutation(1000))
    assert not np.array_equal(first, group_rng(8, '[["dataset", "a"]]').permutation(1000))
    # Pinned: a change of the seeding scheme silently reshuffles every user's groups.
    assert group_rng(0, "global").permutation(8).tolist() == PINNED_GLOBAL_ORDER


PINNED_GLOBAL_ORDER = [7, 1, 6, 3, 4, 5, 0, 2]


def test_heavy_tailed_sizes_are_heavy_tailed():
    sizes = heavy_tailed_sizes(1_000_000, 600, np.random.default_rng(0))
    assert sizes.sum() == 1_000_000 and sizes.min() >= 1
    assert 0.7 < gini(sizes) < 0.95
    assert gini(np.full(10, 5)) == pytest.approx(0.0)
