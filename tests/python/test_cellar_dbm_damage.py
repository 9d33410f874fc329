"""Damage in native stores through cellar.dbm (issue 13): every open mode, lookups and
iteration report it as cellar.dbm.error naming the offset and `cellar repair`; never a silent
prefix, never KeyError for a damaged key; a FIFO is refused at once."""

import os
import subprocess
import sys
import textwrap

import pytest

import cellar.dbm as cdbm

ERROR = cdbm.error[0]


def make_store(path, n=400):
    # Small enough (about 19 KB of records) that close leaves them in the log tier: a larger
    # store is folded into compressed blocks at close, where these byte patterns no longer
    # appear (damage inside a block: crates/cellar-engine/tests/compact.rs and matrix.rs).
    with cdbm.open(str(path), "c") as db:
        for i in range(n):
            db[b"key-%04d" % i] = b"value-%d-" % i * 3
    return path


def flip(path, needle, delta=3, bit=0x10):
    data = bytearray(path.read_bytes())
    pos = data.index(needle) + delta
    data[pos] ^= bit
    path.write_bytes(bytes(data))


def test_damaged_value_is_reported_by_get_keys_and_iteration(tmp_path):
    p = make_store(tmp_path / "db")
    flip(p, b"value-200-", delta=12)
    with cdbm.open(str(p), "r") as db:
        assert db[b"key-0199"] == b"value-199-" * 3
        with pytest.raises(ERROR, match=r"offset \d+.*key-0200.*cellar repair"):
            db[b"key-0200"]
        with pytest.raises(ERROR, match=r"1 damaged record.*399.*intact"):
            db.keys()
        with pytest.raises(ERROR, match="cellar repair"):
            list(db)
        # Iteration yields every intact key first, then reports the damaged record.
        seen = []
        with pytest.raises(ERROR, match=r"offset \d+.*1 damaged record.*399.*intact"):
            for k in db:
                seen.append(k)
        assert len(seen) == 399 and b"key-0200" not in seen
        assert sorted(seen) == sorted(b"key-%04d" % i for i in range(400) if i != 200)
        assert len(db) == 400


def test_damaged_key_byte_is_damage_not_keyerror(tmp_path):
    p = make_store(tmp_path / "db")
    flip(p, b"key-0321", delta=6)
    with cdbm.open(str(p), "r") as db:
        with pytest.raises(ERROR, match="fails its checksum"):
            db[b"key-0321"]
        with pytest.raises(ERROR):
            db.get(b"key-0321")


@pytest.mark.parametrize("flag", ["r", "w", "c", "n"])
def test_garbage_after_a_clean_close_is_refused_by_every_mode(tmp_path, flag):
    p = make_store(tmp_path / "db")
    before = p.read_bytes() + b"\x17garbage appended by something else" * 10
    p.write_bytes(before)
    with pytest.raises(ERROR, match=r"unexpected bytes after the end of a cleanly closed.*cellar repair"):
        cdbm.open(str(p), flag)
    after = p.read_bytes()
    assert len(after) == len(before) and after[4096:] == before[4096:]


@pytest.mark.parametrize("flag", ["r", "w", "c"])
def test_a_store_cut_below_its_checkpoint_is_refused(tmp_path, flag):
    p = make_store(tmp_path / "db")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ERROR, match="cut short"):
        cdbm.open(str(p), flag)


def test_damage_in_the_log_of_a_killed_writer_is_not_a_torn_tail(tmp_path):
    p = tmp_path / "db"
    # A writer that dies without closing (no final checkpoint): the whole log is replayed.
    code = textwrap.dedent(
        f"""
        import os, cellar.dbm as d
        db = d.open({str(p)!r}, "c")
        for i in range(1000):
            db[b"key-%04d" % i] = b"value-%d-" % i * 3
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    flip(p, b"value-500-", delta=12)
    for flag in ["r", "w", "c"]:
        with pytest.raises(ERROR, match=r"499 intact records follow.*cellar repair"):
            cdbm.open(str(p), flag)


def test_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    assert cdbm.whichdb(str(fifo)) == ""
    for flag in ["r", "w", "c", "n"]:
        with pytest.raises(ERROR):
            cdbm.open(str(fifo), flag)
    assert fifo.exists()
