"""The docs hold together: every relative link and anchor in README.md and docs/*.md resolves,
and no string the package prints cites a design document that is not in the repository."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces -> -."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            n = seen.get(slug, 0)
            out.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    out |= set(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", page.read_text()))
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
    text = re.sub(r"`[^`\n]*`", "", text)
    return [a or b for a, b in _LINK.findall(text)]


def test_slugs_follow_github():
    assert _slug("The angle claim of Sec. 3.4, and why") == "the-angle-claim-of-sec-34-and-why"
    assert _slug("`AmendedArchitect`: the wrapper") == "amendedarchitect-the-wrapper"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, broken


def test_no_printed_string_cites_a_missing_design_document():
    """Messages, descriptions and fixture help must point at files users have (docs/...),
    never at DESIGN.md or an issue tracker that is not in the repository."""
    offenders = []
    for path in sorted((ROOT / "darts_amend").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef,
                                           ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings and re.search(r"DESIGN|issue #?\d", node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


# --------------------------------------------------------------------------- docs/api.md

API = ROOT / "docs" / "api.md"
# names in api.md's signature blocks that are local variables of an example, not module names
_LOCAL_NAMES = {"hvp", "restore", "estimator", "dataclass"}
_NOT_LISTED = {"__version__"}


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _sections(text: str) -> list[tuple[list[str], str]]:
    """(modules named in the heading, the section's text) for each ``## ... (`darts_amend.x`)``."""
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    out = []
    for part in parts:
        heading = part.splitlines()[0]
        modules = re.findall(r"`(darts_amend(?:\.\w+)*)`", heading)
        if modules:
            out.append((modules, part))
    return out


def _called_names(block: str) -> set[str]:
    """Names a signature block shows called or listed: ``name(`` not after a dot, and bare
    UPPER_CASE constants at the start of a line, comments stripped; a method shown in a
    ``class C:`` block as ``C.name``."""
    names: set[str] = set()
    cls = None
    for line in block.splitlines():
        code = line.split("#", 1)[0]
        if match := re.match(r"class (\w+)", code):
            cls = match.group(1)
        if match := re.match(r"\s+def (\w+)\(", code):
            names.add(f"{cls}.{match.group(1)}")
            continue
        names |= set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\(", code))
        names |= set(re.findall(r"^([A-Z][A-Z_]+)\b", code.strip()))
    return names - {"with", "tuple", "dict", "list", "float", "bool", "str", "int"}


def _has(obj: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_api_md_runnable_blocks_run():
    """The import blocks of docs/api.md (the top-level names, the testing kit) run as shown."""
    blocks = _code_blocks(API.read_text())
    runnable = [b for b in blocks if b.startswith(("import darts_amend", "from darts_amend"))]
    assert len(runnable) >= 3, "expected the top-level, usage and testing-kit blocks"
    for block in runnable:
        if "train_loader" in block:  # the loop needs a model and data: examples/ run it
            compile(block, "docs/api.md", "exec")
            continue
        exec(compile(block, "docs/api.md", "exec"), {})


def test_api_md_names_exist_in_the_module_of_their_section():
    import importlib

    problems = []
    for modules, section in _sections(API.read_text()):
        mods = [importlib.import_module(m) for m in modules]
        for block in _code_blocks(section):
            for name in _called_names(block) - _LOCAL_NAMES:
                if not any(_has(m, name) for m in mods):
                    problems.append(f"{name} (section {', '.join(modules)})")
    assert not problems, problems


@pytest.mark.parametrize(
    "module",
    ["darts_amend", "darts_amend.options", "darts_amend.model", "darts_amend.tensorlist",
     "darts_amend.batches", "darts_amend.linear_solve", "darts_amend.hvp",
     "darts_amend.estimators", "darts_amend.randomness", "darts_amend.testing"],
)
def test_every_public_name_of_the_core_is_in_api_md(module):
    """A name in a core module's ``__all__`` is documented in docs/api.md (re-exports count as
    documented where they are defined)."""
    import importlib

    text = API.read_text()
    names = set(importlib.import_module(module).__all__) - _NOT_LISTED
    missing = sorted(n for n in names if not re.search(rf"(?<![\w]){re.escape(n)}(?!\w)", text))
    assert not missing, f"{module}: public but not in docs/api.md: {missing}"


# --------------------------------------------------------------------------- docs/errors.md


def test_errors_md_command_rows_print_exactly_the_documented_message(tmp_path, monkeypatch):
    """Every row of docs/errors.md's command-line table that needs no prepared file, folder,
    run or device prints exactly the message shown, and writes nothing (the rows with files are
    run by tests/test_errors.py, which checks a part of each message)."""
    import contextlib
    import io
    import shlex

    from darts_amend.cli import main

    monkeypatch.chdir(tmp_path)
    rows = re.findall(r"^\| `darts-amend ([^`]*)` \| (.*) \|$",
                      (ROOT / "docs" / "errors.md").read_text(), flags=re.M)
    skip = ("{", "--resume", "1000000", "--device", "PATH")  # files, runs, memory, hardware
    rows = [(cmd, msg) for cmd, msg in rows if not any(s in cmd for s in skip)]
    assert len(rows) >= 30
    wrong = []
    for cmd, msg in rows:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(shlex.split(cmd))
            except SystemExit as exc:
                rc = exc.code
        if rc != 2 or err.getvalue().strip() != msg:
            wrong.append(f"darts-amend {cmd}: rc {rc}, printed {err.getvalue().strip()!r}")
    assert not wrong, "\n".join(wrong)
    assert list(tmp_path.iterdir()) == []


def test_readme_links_every_docs_page():
    """A new user finds every page of docs/ from README.md."""
    linked = {Path(t.partition("#")[0]).name for t in _links(ROOT / "README.md")}
    missing = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in linked)
    assert not missing, missing


def test_every_public_name_of_diagnostics_is_in_diagnostics_md():
    import darts_amend.diagnostics as diagnostics

    text = (ROOT / "docs" / "diagnostics.md").read_text()
    missing = sorted(n for n in diagnostics.__all__
                     if not re.search(rf"(?<![\w]){re.escape(n)}(?!\w)", text))
    assert not missing, f"public but not in docs/diagnostics.md: {missing}"


def test_every_public_name_of_the_supernet_is_in_search_spaces_md():
    import darts_amend.supernet as supernet

    text = (ROOT / "docs" / "search_spaces.md").read_text()
    missing = sorted(n for n in supernet.__all__
                     if not re.search(rf"(?<![\w]){re.escape(n)}(?!\w)", text))
    assert not missing, f"public but not in docs/search_spaces.md: {missing}"


def test_api_md_lists_exactly_the_names_hvp_re_exports():
    import darts_amend.hvp as hvp

    text = API.read_text()
    sentence = re.search(r"still importable from\s+`darts_amend.hvp`.*?:(.*?)\.\n", text, re.S)
    assert sentence, "the re-export sentence of the hvp section"
    listed = set(re.findall(r"`(\w+)`", sentence.group(1)))
    reexported = {n for n in hvp.__all__
                  if getattr(getattr(hvp, n), "__module__", "darts_amend.hvp") != "darts_amend.hvp"
                  and n != "MODES"}
    assert listed == reexported


def test_readme_and_api_md_training_loops_run_on_a_tiny_supernet():
    """The loops of README.md and docs/api.md, as printed, on a toy supernet with a ``_loss``
    (MixedMLP, float64) and three batches: they run and move the alphas."""
    import torch

    from darts_amend.testing import MixedMLP

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    loaders = {"train_loader": [(x, y)] * 3, "valid_loader": [(x + 0.1, y)] * 3}
    readme = _code_blocks((ROOT / "README.md").read_text())
    api = _code_blocks(API.read_text())
    loops = [b for b in readme + api if "for (x, y), (xv, yv) in zip(" in b]
    assert len(loops) == 2
    for block in loops:
        model = MixedMLP()  # float64, alphas outside parameters() as in upstream DARTS
        before = [a.detach().clone() for a in model.arch_parameters()]
        namespace = {"model": model, **loaders,
                     "w_optimizer": torch.optim.SGD(model.parameters(), lr=0.01)}
        exec(block, namespace)
        after = model.arch_parameters()
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    # the second-order example of api.md, with the names the README loop defined
    unrolled = next(b for b in api if 'estimator="unrolled"' in b)
    namespace.update(train_batch=(x, y), valid_batch=(x + 0.1, y),
                     weights=[p for p in model.parameters()
                              if all(p is not a for a in model.arch_parameters())])
    namespace["w_opt"] = torch.optim.SGD(namespace["weights"], lr=0.025, momentum=0.9)
    exec("from darts_amend import AmendedArchitect\n" + unrolled, namespace)


def test_testing_md_examples_run():
    """docs/testing.md: the loop over all problems (with the exact hypergradient as the
    estimator, which must pass) and the Newton / exact-hypergradient snippet on a fresh ridge."""
    from darts_amend.testing import exact_hypergradient, ridge

    blocks = _code_blocks((ROOT / "docs" / "testing.md").read_text())
    loop = next(b for b in blocks if "for problem in all_problems()" in b)
    loop = re.sub(r"def my_estimator\(.*?\n(?=\n)", "", loop, flags=re.S)  # the placeholder
    exec(loop, {"my_estimator": lambda m, t, v, **kw: exact_hypergradient(m, t, v, **kw)})
    newton = next(b for b in blocks if "solve_inner_(model, train_batch)" in b)
    problem = ridge()
    namespace = {"model": problem.model, "train_batch": problem.train_batch,
                 "valid_batch": problem.valid_batch}
    exec(newton, namespace)
    assert "g1" in namespace["exact"].terms


def test_plain_loop_example_runs_with_every_mode(capsys):
    """examples/plain_loop.py (the runnable loop api.md and README.md point to) offers every
    product mode and runs one epoch with the newest, forward differences."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plain_loop", ROOT / "examples" / "plain_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from darts_amend.hvp import MODES

    assert set(MODES) == {"exact", "finite_difference", "forward_difference"}
    assert module.main(["--epochs", "1", "--mode", "forward_difference", "--threads", "1"]) == 0
    assert "epoch 1: val loss" in capsys.readouterr().out
