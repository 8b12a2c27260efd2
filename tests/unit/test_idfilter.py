"""The report-id Bloom filter never changes an answer, only how often the store is asked."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.idfilter import IdFilter


class Store:
    """A dict standing in for the store's report-id table (the thing behind the filter)."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        self.queries = 0

    def lookup(self, report_id: str) -> bytes | None:
        self.queries += 1
        return self.rows.get(report_id)

    def ids(self) -> list[str]:
        return list(self.rows)


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_answers_equal_the_lookup_and_most_misses_skip_it() -> None:
    store = Store()
    stored = _ids(20_000)
    store.rows = {i: i.encode()[:8] for i in stored}
    f = IdFilter(store.lookup, store.ids)
    fresh = _ids(20_000)
    assert all(f(i) == i.encode()[:8] for i in stored)  # no false negative
    assert all(f(i) is None for i in fresh)
    assert f.asked == store.queries  # every store query went through the filter's "maybe"
    assert store.queries - 20_000 < 20_000 * 0.02  # false positives: under 2 %
    assert f.passed > 19_600


def test_grows_past_its_capacity_without_forgetting() -> None:
    store = Store()
    f = IdFilter(store.lookup, store.ids)
    added = _ids(150_000)  # more than twice the initial capacity
    for i in added:
        store.rows[i] = b"d"
        f.add(i)
    assert all(f.might_contain(i) for i in added)
    store.queries = 0
    fresh = _ids(10_000)
    assert all(f(i) is None for i in fresh)
    assert store.queries < 10_000 * 0.02


def test_rebuild_learns_ids_stored_by_someone_else() -> None:
    store = Store()
    f = IdFilter(store.lookup, store.ids)
    other = _ids(100)
    store.rows.update((i, b"x") for i in other)  # another worker sharing the store
    # Before a rebuild the filter may say "new" for them (the shared-store worker then loses
    # its commit race on the report id and rebuilds); after it, never.
    f.rebuild()
    assert all(f(i) == b"x" for i in other)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=40), max_size=300),
    st.lists(st.text(min_size=1, max_size=40), max_size=300),
    st.booleans(),
)
def test_same_verdicts_as_the_lookup_alone(added: list[str], asked: list[str], via: bool) -> None:
    store = Store()
    f = IdFilter(store.lookup, store.ids)
    for i in added:
        store.rows[i] = i.encode()
        if via:
            f.add(i)
    if not via:
        f.rebuild()
    for i in [*asked, *added]:
        assert f(i) == store.rows.get(i)
