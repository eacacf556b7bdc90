from gssl_fast.run.log import MetricsLog


def test_metrics_log_truncates_orphaned_epochs(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for e in range(3):
        log.append({"epoch": e})
    log.truncate_after(0)
    assert [r["epoch"] for r in log.read()] == [0]


def test_a_tagged_log_reads_and_truncates_its_own_rows_alone(tmp_path):
    path = tmp_path / "m.jsonl"
    first, second = MetricsLog(path, tags={"stage": "a"}), MetricsLog(path, tags={"stage": "b"})
    for e in range(3):
        first.append({"epoch": e, **first.tags()})
        second.append({"epoch": e, **second.tags()})
    first.truncate_after(0)
    assert [(r["stage"], r["epoch"]) for r in first.read_mine()] == [("a", 0)]
    assert [r["epoch"] for r in second.read_mine()] == [0, 1, 2]
    assert len(MetricsLog(path).read_mine()) == 4  # an untagged log owns every row
