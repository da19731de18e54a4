"""``darts-amend patch-repo``: writability checked before anything is touched (also for
``--dry-run``), all files or none, and ``--undo`` restoring the checkout byte for byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_patch_repo import call, fake_checkout, tree

from darts_amend.adapters import flavors
from darts_amend.adapters import patch_repo as lib
from darts_amend.cli import main


def _state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and permission bits."""
    return {name: (data, stat.S_IMODE((root / name).stat().st_mode))
            for name, data in tree(root).items()}


@pytest.mark.parametrize("flavor", ["darts", "pc_darts", "pdarts"])
def test_undo_restores_the_checkout_byte_for_byte(tmp_path, capsys, flavor):
    d = fake_checkout(tmp_path, flavor)
    search = d / "train_search.py"
    # CRLF line endings, a byte-order-free non-ASCII comment and an executable bit must survive
    search.write_bytes(search.read_bytes().replace(b"\n", b"\r\n") + b"# caf\xc3\xa9\r\n")
    search.chmod(0o755)
    before = _state(tmp_path)
    assert call(tmp_path, flavor) == 0
    patched = search.read_bytes()
    assert patched.count(flavors.FLAGS_BEGIN.encode() + b"\r\n") == 1  # the block is CRLF too
    assert b"\r\r" not in patched and patched.count(b"\n") == patched.count(b"\r\n")
    assert _state(tmp_path) != before
    capsys.readouterr()
    assert main(["patch-repo", str(tmp_path), "--undo"]) == 0
    assert "undid patch-repo" in capsys.readouterr().out
    assert _state(tmp_path) == before
    # undoing again: nothing to undo, nothing changes
    assert main(["patch-repo", str(tmp_path), "--undo"]) == 0
    assert "nothing to undo" in capsys.readouterr().out
    assert _state(tmp_path) == before


def test_undo_dry_run_writes_nothing_and_repatch_after_undo_works(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    original = tree(tmp_path)
    assert call(tmp_path, "darts") == 0
    patched = tree(tmp_path)
    assert main(["patch-repo", str(d), "--undo", "--dry-run"]) == 0
    assert "would undo: restored architect.py from architect.py.orig" in capsys.readouterr().out
    assert tree(tmp_path) == patched
    assert main(["patch-repo", str(d), "--undo"]) == 0
    assert tree(tmp_path) == original
    assert call(tmp_path, "darts") == 0
    assert tree(tmp_path) == patched


def test_undo_keeps_later_edits_and_says_so(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    assert call(tmp_path, "darts") == 0
    search = d / "train_search.py"
    search.write_text(search.read_text() + "print('my change')\n")
    assert main(["patch-repo", str(tmp_path), "--undo"]) == 0
    out = capsys.readouterr().out
    assert "kept train_search.py.orig" in out
    text = search.read_text()
    assert flavors.FLAGS_BEGIN not in text and text.endswith("print('my change')\n")
    assert not (d / "architect.py.orig").exists()


def test_undo_refuses_a_drop_in_without_backup(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    (d / "architect.py").write_text(flavors.dropin_text("darts"))  # copied by hand, no backup
    before = tree(tmp_path)
    assert main(["patch-repo", str(tmp_path), "--undo"]) == 2
    err = capsys.readouterr().err
    assert "there is no architect.py.orig to restore" in err and len(err.splitlines()) == 1
    assert tree(tmp_path) == before


@pytest.mark.parametrize("undo", [False, True])
def test_a_write_failing_half_way_puts_every_file_back(tmp_path, capsys, monkeypatch, undo):
    fake_checkout(tmp_path, "darts")
    if undo:
        assert call(tmp_path, "darts") == 0
    before = _state(tmp_path)
    real, calls = os.replace, []

    def flaky(src, dst):  # the last file write fails (disk full, say)
        calls.append(dst)
        if len(calls) == (2 if undo else 3):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(lib.os, "replace", flaky)
    rc = main(["patch-repo", str(tmp_path), "--undo"]) if undo else call(tmp_path, "darts")
    monkeypatch.setattr(lib.os, "replace", real)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and "nothing was changed" in err
    assert _state(tmp_path) == before  # no backup, no drop-in, no temporary file left


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_unwritable_checkout_refused_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                 extra):
    d = fake_checkout(tmp_path, "darts")
    before = tree(tmp_path)
    # as root, permissions do not stop writes: stand in for a read-only folder at os.access
    real = os.access
    monkeypatch.setattr(lib.os, "access",
                        lambda p, mode: False if Path(p) == d else real(p, mode))
    assert call(tmp_path, "darts", *extra) == 2
    captured = capsys.readouterr()
    assert f"cannot write to {d}" in captured.err and "would write" not in captured.out
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_architect_is_refused_for_real(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    (d / "architect.py").chmod(0o444)
    before = tree(tmp_path)
    assert call(tmp_path, "darts", "--dry-run") == 2
    assert "cannot write" in capsys.readouterr().err
    assert tree(tmp_path) == before
