"""``darts-amend patch-repo`` on generated fake checkouts (no network, no upstream code)."""

from __future__ import annotations

import argparse
import re
import runpy
import sys
from pathlib import Path

import pytest
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

from darts_amend.adapters.flavors import FLAGS_BEGIN, PDARTS_EDIT, dropin_text, flags_block
from darts_amend.adapters.patch_repo import plan_patch, scan_compat
from darts_amend.cli import patch_repo

REPO_ROOT = Path(__file__).resolve().parents[1]

# A tiny runnable stand-in for each repo's model_search.py: leaf-tensor alphas, _loss, and a new()
# that
# raises, so a patched checkout proves the drop-in never needs it.
_MODEL = """\
import torch
import torch.nn as nn
import torch.nn.functional as F


class Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.ops = nn.ModuleList([nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3), nn.Tanh())])
        self._criterion = nn.CrossEntropyLoss()
        self.alphas_normal = (1e-3 * torch.randn(2)).requires_grad_()
        {extra}
    def arch_parameters(self):
        return self._arch_parameters

    def forward(self, x):
        w = F.softmax(self.alphas_normal, dim=-1)
        return sum(wi * op(x) for wi, op in zip(w, self.ops)) * {scale}

    def _loss(self, x, y):
        return self._criterion(self(x), y)

    def new(self):
        raise RuntimeError("new() must not be needed")
"""
_DARTS_EXTRA = "self._arch_parameters = [self.alphas_normal]\n"
_PC_EXTRA = (
    "self.betas_normal = (1e-3 * torch.randn(1)).requires_grad_()\n"
    "        self._arch_parameters = [self.alphas_normal, self.betas_normal]\n"
)
_PC_SCALE = "torch.sigmoid(self.betas_normal)"

_SEARCH = """\
import argparse
import torch
import torch.nn as nn
from architect import Architect
from model_search import Network

parser = argparse.ArgumentParser("cifar")
parser.add_argument('--learning_rate', type=float, default=0.025, help='init learning rate')
parser.add_argument('--momentum', type=float, default=0.9, help='momentum')
parser.add_argument('--weight_decay', type=float, default=3e-4, help='weight decay')
parser.add_argument('--unrolled', action='store_true', default=False)
parser.add_argument('--arch_learning_rate', type=float, default=3e-4)
parser.add_argument('--arch_weight_decay', type=float, default=1e-3)
args = parser.parse_args()

torch.manual_seed(0)
model = Network()
optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                            weight_decay=args.weight_decay)
architect = Architect(model, args)
start = [a.detach().clone() for a in model.arch_parameters()]
for step in range(3):
    input, target = torch.randn(8, 4), torch.randint(0, 3, (8,))
    input_search, target_search = torch.randn(8, 4), torch.randint(0, 3, (8,))
    architect.step(input, target, input_search, target_search, args.learning_rate, optimizer,
                   unrolled=args.unrolled)
    optimizer.zero_grad()
    loss = model._loss(input, target)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
moved = [not torch.equal(a, b) for a, b in zip(start, model.arch_parameters())]
"""

# Lines in the style of the upstream utils / scripts that break on modern PyTorch / numpy.
_UTILS = """\
import numpy as np
import torch


def count_parameters_in_MB(model):
  return np.sum(np.prod(v.size()) for name, v in model.named_parameters())/1e6


def accuracy(output, target, topk=(1,)):
  _, pred = output.topk(max(topk), 1, True, True)
  correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
  return [correct[:k].view(-1).float().sum(0) for k in topk]


def log(objs, loss, n):
  objs.update(loss.data[0], n)


def load(model, model_path):
  model.load_state_dict(torch.load(model_path))
"""

_UPSTREAM_ARCHITECT = '''\
import torch


class Architect(object):
  """stand-in for the upstream file"""

  def __init__(self, model, args):
    raise RuntimeError("the original architect ran")
'''

_PDARTS_SEARCH = """\
import argparse
import torch
import torch.nn as nn
from model_search import Network

parser = argparse.ArgumentParser("cifar")
parser.add_argument('--arch_learning_rate', type=float, default=6e-4)
args = parser.parse_args()


def main():
    switches_normal = [[True] * 8 for _ in range(14)]
    model = nn.DataParallel(Network())
    optimizer_a = torch.optim.Adam(model.module.arch_parameters(), lr=args.arch_learning_rate)


def train(input, target, input_search, target_search, model, criterion, optimizer_a):
    input = input.cuda()
    target = target.cuda(non_blocking=True)
    optimizer_a.zero_grad()
    loss_a = criterion(model(input_search), target_search)
    loss_a.backward()
    optimizer_a.step()
"""


def fake_checkout(root: Path, flavor: str) -> Path:
    """Write a minimal checkout of ``flavor`` under ``root``; returns the folder holding
    train_search.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("fake checkout\n")
    if flavor == "darts":
        d = root / "cnn"
        d.mkdir()
        model = _MODEL.format(extra=_DARTS_EXTRA, scale="1.0")
    elif flavor == "pc_darts":
        d = root
        model = _MODEL.format(extra=_PC_EXTRA, scale=_PC_SCALE)
    else:
        d = root
        model = _MODEL.format(extra=_DARTS_EXTRA, scale="1.0").replace(
            "class Network", "switches_normal = None\n\n\nclass Network"
        )
    (d / "model_search.py").write_text(model)
    (d / "utils.py").write_text(_UTILS)
    if flavor == "pdarts":
        (d / "train_search.py").write_text(_PDARTS_SEARCH)
    else:
        (d / "train_search.py").write_text(_SEARCH)
        (d / "architect.py").write_text(_UPSTREAM_ARCHITECT)
    return d


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def call(path: Path, flavor: str, *extra: str) -> int:
    """Go through add_parser exactly as the CLI does, then run()."""
    parser = argparse.ArgumentParser(prog="darts-amend")
    patch_repo.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["patch-repo", str(path), "--flavor", flavor, *extra])
    return args.func(args)


def test_refuses_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    before = tree(tmp_path)
    assert call(tmp_path, "darts") == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # errors go to stderr (exit code 2)
    out = captured.err
    assert "refusing" in out and "no train_search.py" in out and "quark0/darts" in out
    assert tree(tmp_path) == before
    assert call(tmp_path / "missing", "pdarts") == 2
    assert "not a directory" in capsys.readouterr().err


def test_refuses_the_wrong_flavor_without_writing(tmp_path, capsys):
    fake_checkout(tmp_path / "pc", "pc_darts")
    fake_checkout(tmp_path / "d", "darts")
    before = tree(tmp_path)
    assert call(tmp_path / "pc", "darts") == 2
    assert "--flavor pc_darts" in capsys.readouterr().err
    assert call(tmp_path / "d", "pdarts") == 2
    assert "--flavor darts" in capsys.readouterr().err
    assert call(tmp_path / "d" / "cnn", "pdarts") == 2
    assert "optimizer_a" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_refuses_an_architect_that_is_neither_upstream_nor_ours(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    (d / "architect.py").write_text("print('something else')\n")
    before = tree(tmp_path)
    assert call(tmp_path, "darts") == 2
    assert "class Architect" in capsys.readouterr().err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("flavor", ["darts", "pc_darts"])
def test_patch_backs_up_once_and_is_idempotent(tmp_path, capsys, flavor):
    d = fake_checkout(tmp_path, flavor)
    original_arch = (d / "architect.py").read_text()
    original_search = (d / "train_search.py").read_text()
    assert call(tmp_path, flavor) == 0
    out = capsys.readouterr().out
    assert (d / "architect.py").read_text() == dropin_text(flavor)
    assert (d / "architect.py.orig").read_text() == original_arch
    assert (d / "train_search.py.orig").read_text() == original_search
    patched = (d / "train_search.py").read_text()
    assert patched.count(FLAGS_BEGIN) == 1
    assert patched.index(FLAGS_BEGIN) < patched.index("args = parser.parse_args()")
    assert patched.replace(flags_block(), "") == original_search
    assert "--amend_eta 0.1" in out and "--amend_estimator unrolled --unrolled" in out
    after_first = tree(tmp_path)
    assert call(tmp_path, flavor) == 0
    assert "already patched" in capsys.readouterr().out
    assert tree(tmp_path) == after_first


def test_repatching_a_restored_upstream_file_keeps_the_first_backup(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    assert call(d, "darts") == 0  # the cnn/ folder itself is accepted too
    (d / "architect.py").write_text(
        (d / "architect.py.orig").read_text()
    )  # e.g. `git checkout architect.py`
    assert call(tmp_path, "darts") == 0
    assert (d / "architect.py").read_text() == dropin_text("darts")
    assert (d / "architect.py.orig").read_text() == _UPSTREAM_ARCHITECT
    # a user-edited architect with a different backup already present: refuse rather than lose
    # either file
    (d / "architect.py").write_text(_UPSTREAM_ARCHITECT + "# my change\n")
    before = tree(tmp_path)
    capsys.readouterr()
    assert call(tmp_path, "darts") == 2
    assert "differs from its backup" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_an_older_drop_in_is_updated_without_a_backup(tmp_path):
    d = fake_checkout(tmp_path, "darts")
    assert call(tmp_path, "darts") == 0
    (d / "architect.py").write_text(dropin_text("darts").replace("Needs", "Requires"))
    plan = plan_patch(tmp_path, "darts")
    assert plan.architect_action == "update" and plan.architect_backup is None
    assert call(tmp_path, "darts") == 0
    assert (d / "architect.py").read_text() == dropin_text("darts")


def test_dry_run_writes_nothing(tmp_path, capsys):
    fake_checkout(tmp_path, "pc_darts")
    before = tree(tmp_path)
    assert call(tmp_path, "pc_darts", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would write" in out and "would add" in out
    assert tree(tmp_path) == before


def test_pdarts_gets_the_architect_the_flags_and_the_printed_edit(tmp_path, capsys):
    d = fake_checkout(tmp_path, "pdarts")
    assert call(tmp_path, "pdarts") == 0
    out = capsys.readouterr().out
    assert (d / "architect.py").read_text() == dropin_text("pdarts")
    assert not (d / "architect.py.orig").exists()  # P-DARTS has no architect to back up
    assert (d / "train_search.py").read_text().count(FLAGS_BEGIN) == 1
    assert PDARTS_EDIT in out
    assert "input.cuda()" in out  # the compat scan covers train_search.py too


def test_compat_scan_names_each_breaking_line(tmp_path, capsys):
    d = fake_checkout(tmp_path, "darts")
    issues = {(i.path.name, i.line): i for i in scan_compat(d)}
    utils = _UTILS.splitlines()
    expect = {
        "np.sum(np.prod": "builtin `sum",
        "correct[:k].view(-1)": ".reshape(-1)",
        "loss.data[0]": ".item()",
        "torch.load(model_path)": "map_location",
    }
    for needle, fix in expect.items():
        line = next(i for i, text in enumerate(utils, start=1) if needle in text)
        assert fix in issues[("utils.py", line)].fix, needle
    call(tmp_path, "darts")
    out = capsys.readouterr().out
    assert "utils.py:" in out and ".item()" in out
    assert not any(i.path.name == "architect.py" for i in scan_compat(d))  # the drop-in is clean


@pytest.mark.parametrize("flavor,eta", [("darts", "0.05"), ("pc_darts", "0")])
def test_a_patched_checkout_runs_with_the_new_flag(tmp_path, monkeypatch, flavor, eta):
    d = fake_checkout(tmp_path, flavor)
    assert call(tmp_path, flavor) == 0
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setattr(sys, "argv", ["train_search.py", "--amend_eta", eta])
    for name in ("architect", "model_search"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        result = runpy.run_path(str(d / "train_search.py"), run_name="__main__")
    finally:
        for name in ("architect", "model_search"):
            sys.modules.pop(name, None)
    architect = result["architect"]
    assert (
        type(architect).__module__
        == f"darts_amend.adapters.{dict(darts='darts', pc_darts='pc_darts')[flavor]}"
    )
    assert architect.amend_eta == float(eta)
    assert all(result["moved"])
    assert len(result["model"].arch_parameters()) == (2 if flavor == "pc_darts" else 1)


def test_unrolled_without_the_unrolled_estimator_is_refused_at_start(tmp_path, monkeypatch):
    d = fake_checkout(tmp_path, "darts")
    assert call(tmp_path, "darts") == 0
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setattr(sys, "argv", ["train_search.py", "--unrolled"])
    for name in ("architect", "model_search"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        with pytest.raises(ValueError, match="--amend_estimator unrolled"):
            runpy.run_path(str(d / "train_search.py"), run_name="__main__")
    finally:
        for name in ("architect", "model_search"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "flavor,folder", [("darts", "darts"), ("pc_darts", "pc_darts"), ("pdarts", "pdarts")]
)
def test_integration_files_match_what_patch_repo_writes(flavor, folder):
    base = REPO_ROOT / "integrations" / folder
    assert (base / "architect.py").read_text() == dropin_text(flavor)
    readme = (base / "README.md").read_text()
    for line in flags_block().splitlines():
        assert line in readme, line
    if flavor == "pdarts":
        assert PDARTS_EDIT in readme


def test_drop_in_imports_the_adapter():
    namespace: dict = {}
    exec(compile(dropin_text("pdarts"), "architect.py", "exec"), namespace)
    from darts_amend.adapters.p_darts import Architect

    assert namespace["Architect"] is Architect


def test_patch_repo_exports_what_integrations_md_documents():
    """Every name docs/integrations.md ("patch-repo from Python") shows Python users taking from
    darts_amend.adapters.patch_repo is exported there; the flavour table's names are the objects
    of darts_amend.adapters.flavors, re-exported."""
    from darts_amend.adapters import flavors
    from darts_amend.adapters import patch_repo as lib

    text = (REPO_ROOT / "docs" / "integrations.md").read_text()
    section = text.split("## patch-repo from Python", 1)[1].split("The fork adapters'", 1)[0]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    names = set(re.findall(r"`([A-Za-z_]\w*)(?:\([^`]*\))?`", section))
    names |= set(re.findall(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)+\b", code))  # PatchPlan, UndoPlan, ...
    imported = re.search(r"from darts_amend\.adapters\.patch_repo import (.+)", code)
    names |= {name.strip() for name in imported.group(1).split(",")}
    assert {"FLAVORS", "Flavor", "dropin_text", "flags_block", "PDARTS_EDIT", "PatchPlan",
            "UndoPlan", "CheckoutError", "apply_patch", "plan_undo", "locate_checkout"} <= names
    missing = sorted(name for name in names if name not in lib.__all__ or not hasattr(lib, name))
    assert not missing, f"documented but not exported by adapters.patch_repo: {missing}"
    shared = names & set(flavors.__all__)
    assert {"FLAVORS", "dropin_text", "flags_block"} <= shared
    assert all(getattr(lib, name) is getattr(flavors, name) for name in shared)
