import pytest

from slmops.tasks.registry import ledger


def test_entries_append_in_order_with_a_time(tmp_path):
    path = tmp_path / "sub" / "promotions.jsonl"
    ledger.append(path, {"action": "promote", "version": "1"})
    ledger.append(path, {"action": "rollback", "version": "0"})
    entries = ledger.read(path)
    assert [e["action"] for e in entries] == ["promote", "rollback"]
    assert all("time" in e for e in entries)


def test_a_torn_last_line_is_skipped_but_a_torn_middle_line_is_an_error(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger.append(path, {"action": "promote"})
    with path.open("a") as fh:
        fh.write('{"action": "prom')  # crash mid-write
    assert [e["action"] for e in ledger.read(path)] == ["promote"]
    with path.open("a") as fh:
        fh.write("\n")
    ledger.append(path, {"action": "rollback"})
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        ledger.read(path)


def test_the_append_after_a_torn_line_cuts_it_off(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger.append(path, {"action": "promote"})
    with path.open("a") as fh:
        fh.write('{"action": "prom')  # crash mid-write
    ledger.append(path, {"action": "rollback"})  # (was: appended to the torn line)
    ledger.append(path, {"action": "gate"})
    assert [e["action"] for e in ledger.read(path)] == ["promote", "rollback", "gate"]
    path.write_text('{"torn')
    ledger.append(path, {"action": "gate"})
    assert [e["action"] for e in ledger.read(path)] == ["gate"]


def test_missing_ledger_reads_empty(tmp_path):
    assert ledger.read(tmp_path / "none.jsonl") == []
