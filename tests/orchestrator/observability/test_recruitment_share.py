"""The dashboard's recruitment share: each expert's share of recruitments per time bucket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.observability.dashboard import SHARE_BUCKETS, recruitment_share

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_the_newest_query_falls_in_the_last_bucket_not_one_of_its_own():
    """100 queries over 100 s recruit "a"; the newest, at the span's very end, recruits "b": it is
    one of the last bucket's five queries, not a 21st bucket where "b" holds the whole share."""
    rows = [(T0 + timedelta(seconds=i), ["a"]) for i in range(100)] + [(T0 + timedelta(seconds=100), ["b"])]
    r = recruitment_share(rows)
    assert len(r["times"]) == SHARE_BUCKETS and all(len(v) == SHARE_BUCKETS for v in r["shares"].values())
    assert r["shares"]["b"] == [0.0] * (SHARE_BUCKETS - 1) + [round(1 / 6, 4)]
    assert r["times"][0] == T0.timestamp() and r["times"][-1] == T0.timestamp() + 95


def test_queries_in_one_second_share_one_bucket():
    r = recruitment_share([(T0, ["a", "a"]), (T0 + timedelta(milliseconds=500), ["b"])])
    assert r == {"experts": ["a", "b"], "times": [T0.timestamp()], "shares": {"a": [0.6667], "b": [0.3333]}}
