"""``darts-amend patch-repo`` flavours of the DARTS forks, on generated fake checkouts that carry
only the file layout and the marker lines of each fork (no fork code)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from helpers import one_thread  # noqa: F401

from darts_amend.adapters.flavors import (
    BETA_DARTS_EDIT,
    FLAGS_BEGIN,
    FLAVORS,
    UNROLLED_CHOICE,
    dropin_text,
    flags_block,
)
from darts_amend.cli import patch_repo

REPO_ROOT = Path(__file__).resolve().parents[1]

_PARSER = "import argparse\nparser = argparse.ArgumentParser()\n{body}args = parser.parse_args()\n"
_DARTS_ARCH = (
    "class Architect(object):\n    def step(self, a, b, c, d, eta, opt, unrolled):\n        pass\n"
)
_DARTS_MODEL = "class Network:\n    def arch_parameters(self):\n        return self.alphas_normal\n"

# flavour -> {relative path: text}; the search script's folder is the flavour's subdir
LAYOUTS: dict[str, dict[str, str]] = {
    "drnas": {
        "architect.py": _DARTS_ARCH,
        "DARTS-space/train_search.py": "from architect import Architect\nreg_type = 1\n"
        + _PARSER.format(body="")
        + "architect.step(\n",
        "DARTS-space/model_search.py": "from torch.distributions import Dirichlet\n"
        "def pruning(): pass\ndef wider(): pass\n",
    },
    "beta-darts": {
        "optimizers/darts/architect.py": _DARTS_ARCH + "    def mlc_loss(self): pass\n",
        "nasbench201/train_search.py": "from optimizers.darts.architect import Architect\n"
        + _PARSER.format(body="")
        + "architect.step(i, t, s, u, lr, optimizer, epoch, unrolled=args.unrolled)\n",
        "nasbench201/model.py": "_arch_parameters = None\n",
    },
    "darts-pt": {
        "nasbench201/architect_ig.py": "class Architect(object):\n    m = 'args.method'\n",
        "sota/cnn/train_search.py": "from nasbench201.architect_ig import Architect\n"
        + _PARSER.format(body="")
        + "architect.step(\n",
        "sota/cnn/model_search.py": _DARTS_MODEL,
    },
    "sdarts": {
        "optimizers/darts/architect.py": _DARTS_ARCH,
        "sota/cnn/train_search.py": "from optimizers.darts.architect import Architect\n"
        + _PARSER.format(body="")
        + "architect.step(\n",
        "sota/cnn/model_search.py": _DARTS_MODEL,
    },
    "robust-darts": {
        "src/search/architect.py": _DARTS_ARCH,
        "src/search/train_search.py": "from src.search.architect import Architect\n"
        "architect.step(\n",
        "src/search/args.py": "import argparse\nclass Parser(object):\n    def __init__(self):\n"
        "        parser = argparse.ArgumentParser()\n        self.args = parser.parse_args()\n",
        "src/search/model_search.py": _DARTS_MODEL,
    },
}
# SmoothDARTS and beta-DARTS share their layout: both have both scripts
_NB201 = "from optimizers.darts.architect import Architect\n" + _PARSER.format(body="")
LAYOUTS["sdarts"].update(
    {
        "nasbench201/train_search.py": _NB201 + "architect.step(i, t, s, u, lr, optimizer, "
        "unrolled=args.unrolled)\n",
        "nasbench201/model.py": "_arch_parameters = None\n",
    }
)
LAYOUTS["beta-darts"].update(
    {k: v for k, v in LAYOUTS["sdarts"].items() if k.startswith("sota/")}
)
LAYOUTS["darts-minus"] = {
    **LAYOUTS["robust-darts"],
    "src/search/model_search.py": _DARTS_MODEL + "auxiliary_skip = True\n",
}
# where the drop-in goes and which file gets the flags
TARGETS = {
    "drnas": ("architect.py", "DARTS-space/train_search.py"),
    "beta-darts": ("optimizers/darts/architect.py", "nasbench201/train_search.py"),
    "darts-pt": ("nasbench201/architect_ig.py", "sota/cnn/train_search.py"),
    "sdarts": ("optimizers/darts/architect.py", "sota/cnn/train_search.py"),
    "robust-darts": ("src/search/architect.py", "src/search/args.py"),
    "darts-minus": ("src/search/architect.py", "src/search/args.py"),
}
MODULES = {
    "drnas": "drnas",
    "beta-darts": "beta_darts",
    "darts-pt": "darts_pt",
    "sdarts": "darts",
    "robust-darts": "darts",
    "darts-minus": "darts",
}


def make(root: Path, flavor: str) -> Path:
    for rel, text in LAYOUTS[flavor].items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tree(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def call(path: Path, flavor: str, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="darts-amend")
    patch_repo.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["patch-repo", str(path), "--flavor", flavor, *extra])
    return args.func(args)


@pytest.mark.parametrize("flavor", sorted(TARGETS))
def test_patches_the_forks_files_once(tmp_path, capsys, flavor):
    root = make(tmp_path, flavor)
    arch_rel, flags_rel = TARGETS[flavor]
    original_arch = (root / arch_rel).read_text()
    original_flags = (root / flags_rel).read_text()
    assert call(root, flavor) == 0
    out = capsys.readouterr().out
    assert (root / arch_rel).read_text() == dropin_text(flavor)
    assert f"from darts_amend.adapters.{MODULES[flavor]} import Architect" in dropin_text(flavor)
    assert (root / (arch_rel + ".orig")).read_text() == original_arch
    patched = (root / flags_rel).read_text()
    assert patched.count(FLAGS_BEGIN) == 1
    assert patched.replace(flags_block(" " * 8 if "args.py" in flags_rel else ""), "") == (
        original_flags
    )
    assert FLAVORS[flavor].repo in out
    if FLAVORS[flavor].notes:
        assert FLAVORS[flavor].notes.splitlines()[0] in out
    snapshot = tree(root)
    assert call(root, flavor) == 0
    assert "already patched" in capsys.readouterr().out
    assert tree(root) == snapshot


def test_robust_darts_states_the_unrolled_choice_and_beta_darts_the_epoch_edit(tmp_path, capsys):
    call(make(tmp_path / "r", "robust-darts"), "robust-darts")
    out = capsys.readouterr().out
    assert "keep --unrolled, add --amend_estimator unrolled" in out
    assert "remove --unrolled" in out
    call(make(tmp_path / "b", "beta-darts"), "beta-darts")
    assert "set_epoch" in capsys.readouterr().out


@pytest.mark.parametrize(
    "layout, wrong, hint",
    [
        ("sdarts", "beta-darts", "epoch, unrolled="),  # sdarts' NB201 script passes no epoch
        ("beta-darts", "sdarts", "mlc_loss"),  # same layout, the beta-DARTS architect differs
        ("robust-darts", "darts-minus", "auxiliary_skip"),
        ("darts-minus", "robust-darts", "auxiliary_skip"),
        ("darts-pt", "sdarts", "optimizers.darts.architect"),
    ],
)
def test_forks_with_one_layout_are_told_apart_without_writing(
    tmp_path, capsys, layout, wrong, hint
):
    root = make(tmp_path, layout)
    before = tree(root)
    assert call(root, wrong) == 2
    assert hint in capsys.readouterr().err
    assert tree(root) == before


@pytest.mark.parametrize("flavor", sorted(TARGETS))
def test_integration_folder_matches_patch_repo(flavor):
    base = REPO_ROOT / "integrations" / flavor.replace("-", "_")
    assert (base / "architect.py").read_text() == dropin_text(flavor)
    readme = (base / "README.md").read_text()
    for line in flags_block().splitlines():
        assert line in readme, line
    assert "Checked against" in readme
    if flavor == "beta-darts":
        assert BETA_DARTS_EDIT.splitlines()[0] in readme
    if flavor == "robust-darts":
        assert UNROLLED_CHOICE.splitlines()[0] in readme


@pytest.mark.parametrize("flavor", sorted(LAYOUTS))
def test_undo_restores_a_patched_fork_byte_for_byte(tmp_path, capsys, flavor):
    root = make(tmp_path, flavor)
    before = tree(root)
    assert call(root, flavor) == 0
    assert tree(root) != before
    capsys.readouterr()
    from darts_amend.cli import main

    assert main(["patch-repo", str(root), "--undo"]) == 0
    assert tree(root) == before


@pytest.mark.parametrize("spelling", ["beta_darts", "BETA-DARTS", "beta-darts"])
def test_flavor_accepts_either_separator(tmp_path, capsys, spelling):
    """The integrations/ folders and adapter modules say beta_darts, the flavour beta-darts:
    both spellings (and pc-darts for pc_darts) name the same flavour; a typo is still refused."""
    root = make(tmp_path, "beta-darts")
    assert call(root, spelling, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "Sunshine-Ye/Beta-DARTS" in out
    # the options line names every flag of the flags block
    options = next(line for line in out.splitlines() if line.startswith("options: "))
    for flag in re.findall(r"add_argument\('(--amend_\w+)'", flags_block()):
        assert flag in options, flag
    from darts_amend.cli.patch_repo import _flavor

    assert _flavor("pc-darts") == "pc_darts" and _flavor("darts_pt") == "darts-pt"
    with pytest.raises(SystemExit):
        call(root, "beta_dart")
    assert "invalid choice: 'beta_dart'" in capsys.readouterr().err


def test_library_plan_patch_accepts_either_separator(tmp_path):
    """plan_patch / locate_checkout (the Python route of integrations.md) take the same spellings
    as the CLI; an unknown flavour is a ValueError naming the choices."""
    from darts_amend.adapters.patch_repo import plan_patch

    root = make(tmp_path, "beta-darts")
    plans = [plan_patch(root, spelling) for spelling in ("beta_darts", "BETA-DARTS", "beta-darts")]
    assert {p.flavor.name for p in plans} == {"beta-darts"}
    with pytest.raises(ValueError, match="unknown flavor 'beta_dart'.*beta-darts"):
        plan_patch(root, "beta_dart")

def test_the_python_example_of_integrations_md_runs(tmp_path):
    """docs/integrations.md, "patch-repo from Python": patch and undo a (fake) checkout."""
    root = make(tmp_path, "sdarts")
    before = tree(root)
    text = (REPO_ROOT / "docs" / "integrations.md").read_text()
    block = next(b for b in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
                 if "plan_patch" in b)
    block = block.replace('"path/to/darts", "darts"', f'"{root}", "sdarts"')
    namespace: dict = {}
    exec(block.replace('"path/to/darts"', f'"{root}"'), namespace)
    assert any("architect.py.orig" in line for line in namespace["lines"])
    assert tree(root) == before
