from djk.tasks.engine import lock as L
from djk.tasks.release import store as R
from djk.tasks.release.store import Release


def rel(i: int, status: str) -> Release:
    return Release(f"20260101T00000{i}Z-abc", status)


def test_release_id_is_time_then_revision_and_sorts_by_time():
    first = R.new_release_id("1a2b3c4d", now=0)
    assert first == "19700101T000000Z-1a2b3c4d"
    assert R.new_release_id("00000000", now=60) > first


def test_parse_releases_from_recorded_listing():
    out = (
        f"{R.SEPARATOR}20260101T000001Z-aaa\n"
        '{"deployed_at": "2026-01-01T00:00:01Z", "deployed_by": "me@box", "deps": "d1", '
        '"id": "20260101T000001Z-aaa", "revision": "aaa", "tree": "t1"}\n\nprevious\n'
        f"{R.SEPARATOR}20260101T000002Z-bbb\n\nfailed\n"
    )
    first, second = R.parse_releases(0, out)
    assert (first.status, first.revision, first.deployed_by) == ("previous", "aaa", "me@box")
    assert (second.id, second.status, second.revision) == ("20260101T000002Z-bbb", "failed", "")


def test_rollback_goes_to_newest_good_release_older_than_live():
    releases = [rel(1, "previous"), rel(2, "previous"), rel(3, "failed"), rel(4, "live")]
    target, _ = R.rollback_target(releases, live=rel(4, "live").id)
    assert target.id == rel(2, "x").id
    target, why = R.rollback_target([rel(1, "live")], live=rel(1, "live").id)
    assert target is None and "no earlier good release" in why


def test_rollback_to_a_named_release():
    releases = [rel(1, "previous"), rel(2, "failed"), rel(3, "live")]
    assert R.rollback_target(releases, rel(3, "x").id, to=rel(1, "x").id)[0].id == rel(1, "x").id
    assert "failed" in R.rollback_target(releases, rel(3, "x").id, to=rel(2, "x").id)[1]
    assert "does not exist" in R.rollback_target(releases, rel(3, "x").id, to="nope")[1]
    assert "already live" in R.rollback_target(releases, rel(3, "x").id, to=rel(3, "x").id)[1]


def test_cleanup_keeps_live_and_newest_good_and_ignores_failed_in_the_count():
    releases = [
        rel(1, "previous"),
        rel(2, "previous"),
        rel(3, "failed"),
        rel(4, "previous"),
        rel(5, "failed"),
        rel(6, "live"),
    ]
    deleted = R.cleanup(releases, live=rel(6, "x").id, keep=2)
    # keep=2: the live one plus one good one (4); the newest failed one (5) stays for a look.
    assert deleted == [rel(1, "x").id, rel(2, "x").id, rel(3, "x").id]
    assert R.cleanup(releases, live=rel(6, "x").id, keep=5) == [rel(3, "x").id]
    assert rel(6, "x").id not in R.cleanup(releases, live=rel(6, "x").id, keep=1)
    assert rel(4, "x").id not in R.cleanup(releases, live=rel(6, "x").id, keep=1)


def test_lock_holder_messages():
    busy = L.parse_busy(
        'BUSY example {"by": "ann@laptop", "pid": 4242, "command": "fab -H web1 deploy", '
        '"since": 0}'
    )
    assert busy.site == "example" and busy.pid == 4242
    assert "locked by ann@laptop (pid 4242, `fab -H web1 deploy`)" in busy.describe()
    (holder,) = L.parse_status(0, '{"site": "example", "by": "b@x", "pid": 1, "age": 12.5}\n')
    assert holder.age == 12.5


def test_rolling_batches_by_count_and_percentage():
    from djk.tasks.engine.executor import batches

    assert batches(3, None) == [[0, 1, 2]]
    assert batches(3, "1") == [[0], [1], [2]]
    assert batches(5, "2") == [[0, 1], [2, 3], [4]]
    assert batches(8, "25%") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert batches(3, "50%") == [[0, 1], [2]]
    for bad in ("0", "x", "0%"):
        try:
            batches(3, bad)
        except ValueError as exc:
            assert "--batch" in str(exc)
        else:
            raise AssertionError(bad)
