"""Genotypes: the discrete architecture read off a search, for shared cells and per-cell (S2).

A cell genotype lists, for every intermediate node, its kept inputs as ``(op, state)`` pairs
(two per node, DARTS order) and the states concatenated into the output. State 0 is
``c_{k-2}``, state 1 is ``c_{k-1}``, state ``2 + i`` is node ``i``.

A :class:`Genotype` either has the DARTS fields ``normal / normal_concat / reduce /
reduce_concat`` (all normal cells alike, all reduction cells alike) or ``cells`` (one cell
genotype per cell, as in the paper's S2 space). It round-trips through JSON, parses the text that
upstream DARTS prints, and prints a readable form. The readers (:meth:`Genotype.parse`,
:meth:`Genotype.from_dict`, :meth:`Genotype.from_json`) also accept NAS-Bench-201 cells (the
``|op~0|+|...|`` string or ``{"nb201": ...}``) and then return a
:class:`NB201Genotype` (defined here, with the other genotypes; the NB201 networks are in
:mod:`darts_amend.supernet.nb201`).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .operations import OPS, PARAMETER_FREE

__all__ = [
    "CellGenotype",
    "Genotype",
    "DARTS_V1",
    "DARTS_V2",
    "GENOTYPES",
    "NB201Genotype",
    "NB201_DARTS",
]

_FORMAT = "darts-amend-genotype/1"
Gene = tuple[str, int]


def _state_name(idx: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(idx, f"node{idx - 2}")


def _known_ops(op: Any) -> str:
    """The operations a genotype may name, short enough for one terminal line: the closest
    names when there are any, else all of them with shared parts written once
    (``avg/max_pool_3x3``, ``sep_conv_3x3/5x5/7x7``)."""
    import difflib

    close = difflib.get_close_matches(str(op), list(OPS), n=2, cutoff=0.75)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    sized: dict[str, list[str]] = {}  # stem -> sizes: sep_conv_ -> [3x3, 5x5, 7x7]
    for name in sorted(OPS):
        stem, _, size = name.rpartition("_")
        key = stem + "_" if stem and re.fullmatch(r"\d+x\d+", size) else name
        sized.setdefault(key, []).append(size if key != name else "")
    names = [stem + "/".join(sizes) for stem, sizes in sized.items()]
    kinds: dict[str, list[str]] = {}  # the same op but its first word: avg/max_pool_3x3
    for name in names:
        first, _, rest = name.partition("_")
        kinds.setdefault(rest if rest and "/" not in name else name, []).append(
            first if rest and "/" not in name else "")
    return "known: " + ", ".join(
        "/".join(firsts) + "_" + rest if len(firsts) > 1 else
        (f"{firsts[0]}_{rest}" if firsts[0] else rest) for rest, firsts in kinds.items())


def _genes(edges: Iterable[Any], what: str) -> tuple[Gene, ...]:
    out = []
    for item in edges:
        try:
            op, idx = item
        except (TypeError, ValueError):
            raise ValueError(f"{what}: expected (op, input) pairs, got {item!r}") from None
        if not isinstance(op, str) or op not in OPS:
            raise ValueError(f"{what}: unknown operation {op!r} ({_known_ops(op)})")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ValueError(f"{what}: input index must be an int, got {idx!r}")
        out.append((op, idx))
    return tuple(out)


@dataclass(frozen=True)
class CellGenotype:
    """One cell: ``edges`` = ``((op, input_state), ...)``, two per node, and ``concat``."""

    edges: tuple[Gene, ...]
    concat: tuple[int, ...] = (2, 3, 4, 5)

    def __post_init__(self) -> None:
        edges = _genes(self.edges, "cell genotype")
        concat = tuple(int(i) for i in self.concat)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "concat", concat)
        if not edges or len(edges) % 2:
            raise ValueError(f"cell genotype needs two inputs per node, got {len(edges)} edges")
        for pos, (_, idx) in enumerate(edges):
            node = pos // 2
            if not 0 <= idx < node + 2:
                raise ValueError(
                    f"cell genotype: node {node} cannot take state {idx} (valid: 0..{node + 1})"
                )
        if not concat or any(not 0 <= i < self.steps + 2 for i in concat):
            raise ValueError(f"cell genotype: invalid concat {list(concat)} for {self.steps} nodes")

    @property
    def steps(self) -> int:
        return len(self.edges) // 2

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(op for op, _ in self.edges)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": [[op, idx] for op, idx in self.edges], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellGenotype:
        if not isinstance(data, dict) or "edges" not in data:
            raise ValueError(f"cell genotype: expected a dict with 'edges', got {data!r}")
        extra = set(data) - {"edges", "concat"}
        if extra:
            raise ValueError(f"cell genotype: unknown keys {sorted(extra)}")
        return cls(tuple(tuple(e) for e in data["edges"]), tuple(data.get("concat", (2, 3, 4, 5))))

    def __str__(self) -> str:
        nodes = []
        for node in range(self.steps):
            a, b = self.edges[2 * node], self.edges[2 * node + 1]
            nodes.append(f"node{node} = {a[0]}({_state_name(a[1])}) + {b[0]}({_state_name(b[1])})")
        out = ", ".join(_state_name(i) for i in self.concat)
        return "; ".join(nodes) + f"; out = concat({out})"


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture: shared normal/reduction cells, or one genotype per cell.

    Shared form (upstream DARTS field names, usable with NetworkCIFAR / NetworkImageNet of any
    depth): ``Genotype(normal=[(op, input), ...], normal_concat=[2, 3, 4, 5], reduce=...,
    reduce_concat=...)``. Per-cell form: ``Genotype.per_cell([CellGenotype(...), ...])``; cell i
    of the network uses ``cells[i]`` (the network must have ``len(cells)`` cells).
    """

    normal: tuple[Gene, ...] = ()
    normal_concat: tuple[int, ...] = (2, 3, 4, 5)
    reduce: tuple[Gene, ...] = ()
    reduce_concat: tuple[int, ...] = (2, 3, 4, 5)
    cells: tuple[CellGenotype, ...] | None = None

    #: the cell topology it is a genotype of (a key of ``topology.CELL_TOPOLOGIES``)
    cell_topology: ClassVar[str] = "darts"

    def __post_init__(self) -> None:
        if self.cells is not None:
            cells = tuple(
                c if isinstance(c, CellGenotype) else CellGenotype.from_dict(c) for c in self.cells
            )
            if not cells:
                raise ValueError("per-cell genotype needs at least one cell")
            if self.normal or self.reduce:
                raise ValueError(
                    "a genotype is either shared (normal/reduce) or per-cell, not both"
                )
            object.__setattr__(self, "cells", cells)
            object.__setattr__(self, "normal", ())
            object.__setattr__(self, "reduce", ())
            return
        # validate through CellGenotype, keep the upstream-style tuples
        normal = CellGenotype(self.normal, self.normal_concat)
        reduce = CellGenotype(self.reduce, self.reduce_concat)
        object.__setattr__(self, "normal", normal.edges)
        object.__setattr__(self, "normal_concat", normal.concat)
        object.__setattr__(self, "reduce", reduce.edges)
        object.__setattr__(self, "reduce_concat", reduce.concat)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def shared(cls, normal: CellGenotype, reduce: CellGenotype) -> Genotype:
        return cls(normal.edges, normal.concat, reduce.edges, reduce.concat)

    @classmethod
    def per_cell(cls, cells: Sequence[CellGenotype]) -> Genotype:
        return cls(cells=tuple(cells))

    # -- access ---------------------------------------------------------------------------
    @property
    def is_per_cell(self) -> bool:
        return self.cells is not None

    @property
    def num_cells(self) -> int | None:
        """Cells the genotype fixes (per-cell form), None for shared cells (any depth)."""
        return None if self.cells is None else len(self.cells)

    def cell(self, index: int, reduction: bool) -> CellGenotype:
        """Genotype of cell ``index`` of a network (``reduction`` says which shared cell)."""
        if self.cells is not None:
            if not 0 <= index < len(self.cells):
                raise IndexError(f"per-cell genotype has {len(self.cells)} cells, no cell {index}")
            return self.cells[index]
        if reduction:
            return CellGenotype(self.reduce, self.reduce_concat)
        return CellGenotype(self.normal, self.normal_concat)

    def cell_genotypes(self) -> dict[str, CellGenotype]:
        """``{"normal": ..., "reduce": ...}`` or ``{"cell_0": ..., "cell_1": ...}``."""
        if self.cells is not None:
            return {f"cell_{i}": c for i, c in enumerate(self.cells)}
        return {
            "normal": CellGenotype(self.normal, self.normal_concat),
            "reduce": CellGenotype(self.reduce, self.reduce_concat),
        }

    def skip_share(self) -> float:
        """Fraction of the kept operations (all cells) that are ``skip_connect``."""
        ops = [op for c in self.cell_genotypes().values() for op in c.ops]
        return sum(op == "skip_connect" for op in ops) / len(ops)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        if self.cells is not None:
            return {"format": _FORMAT, "cells": [c.to_dict() for c in self.cells]}
        return {
            "format": _FORMAT,
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genotype:
        if not isinstance(data, dict):
            raise ValueError(f"genotype: expected a JSON object, got {type(data).__name__}")
        if "nb201" in data:  # an NB201 cell: its own class
            return NB201Genotype.from_dict(data)  # type: ignore[return-value]
        fmt = data.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"genotype: unsupported format {fmt!r} (expected {_FORMAT!r})")
        if "cells" in data:
            extra = set(data) - {"format", "cells"}
            if extra:
                raise ValueError(f"genotype: unknown keys {sorted(extra)} next to 'cells'")
            return cls.per_cell([CellGenotype.from_dict(c) for c in data["cells"]])
        keys = {"normal", "normal_concat", "reduce", "reduce_concat"}
        missing, extra = {"normal", "reduce"} - set(data), set(data) - keys - {"format"}
        if missing or extra:
            raise ValueError(
                f"genotype: missing keys {sorted(missing)}, unknown keys {sorted(extra)}"
            )
        return cls(
            tuple(tuple(e) for e in data["normal"]),
            tuple(data.get("normal_concat", (2, 3, 4, 5))),
            tuple(tuple(e) for e in data["reduce"]),
            tuple(data.get("reduce_concat", (2, 3, 4, 5))),
        )

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"genotype: invalid JSON ({exc})") from None
        return cls.from_dict(data)

    def to_upstream(self) -> str:
        """The text upstream DARTS code prints and reads (``Genotype(normal=[...], ...)``)."""
        if self.cells is not None:
            raise ValueError("a per-cell genotype has no upstream DARTS text form")
        return (
            f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )

    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Read a genotype from our JSON, from upstream's ``Genotype(normal=..., ...)`` text, or
        from NAS-Bench-201's ``|op~0|+|op~0|op~1|+|...|`` string (an NB201Genotype)."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_json(text)
        if text.startswith("|"):
            return NB201Genotype.from_string(text)  # type: ignore[return-value]
        match = re.fullmatch(r"Genotype\((.*)\)", text, flags=re.S)
        if not match:
            raise ValueError("genotype text must be JSON or 'Genotype(normal=..., reduce=...)'")
        # range(a, b) -> list; then a safe literal evaluation of each keyword argument
        body = re.sub(
            r"range\(\s*(\d+)\s*,\s*(\d+)\s*\)",
            lambda m: repr(list(range(int(m.group(1)), int(m.group(2))))),
            match.group(1),
        )
        try:
            call = ast.parse(f"f({body})", mode="eval").body
            fields = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}  # type: ignore[attr-defined]
        except (SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot parse genotype text: {exc}") from None
        return cls.from_dict(fields)

    def __str__(self) -> str:
        lines = []
        for kind, cell in self.cell_genotypes().items():
            lines.append(f"{kind}: {cell}")
        head = (
            f"Genotype ({len(self.cells)} cells, one genotype each)"
            if self.cells is not None
            else "Genotype (shared normal / reduction cells)"
        )
        return "\n".join([head] + ["  " + line for line in lines])


#: DARTS (first order), from Liu et al., "DARTS: Differentiable Architecture Search" (2019).
DARTS_V1 = Genotype(
    normal=(
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("avg_pool_3x3", 0),
    ),
    reduce_concat=(2, 3, 4, 5),
)

#: DARTS (second order), the cell of the DARTS paper's CIFAR-10 / ImageNet results.
DARTS_V2 = Genotype(
    normal=(
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)

#: Named genotypes (for ``--genotype NAME`` style look-ups).
GENOTYPES: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}


# --------------------------------------------------------------------------- NB201 cells

_GENE = re.compile(r"([A-Za-z0-9_]+)~(\d+)")


@dataclass(frozen=True)
class NB201Genotype:
    """An NB201 cell: ``nodes[i]`` lists the ``(op, input_state)`` pairs of node ``i + 1``, one
    per earlier state, in input order (NB201's ``Structure``). Any operation of :data:`OPS`
    is accepted; NB201's own five are the benchmark's."""

    nodes: tuple[tuple[tuple[str, int], ...], ...]

    def __post_init__(self) -> None:
        try:
            nodes = tuple(tuple((str(op), int(j)) for op, j in node) for node in self.nodes)
        except (TypeError, ValueError):
            raise ValueError(f"nb201 genotype: expected nodes of (op, input) pairs, "
                             f"got {self.nodes!r}") from None
        if not nodes:
            raise ValueError("nb201 genotype needs at least one node")
        for i, node in enumerate(nodes):
            if [j for _, j in node] != list(range(i + 1)):
                raise ValueError(f"nb201 genotype: node {i + 1} must take states 0..{i} once each, "
                                 f"in order; got {[j for _, j in node]}")
            for op, _ in node:
                if op not in OPS:
                    raise ValueError(f"nb201 genotype: unknown operation {op!r} "
                                     f"({_known_ops(op)})")
        object.__setattr__(self, "nodes", nodes)

    # -- the interface the CLI and plots share with Genotype ---------------------------------
    cell_topology: ClassVar[str] = "nb201"  # a key of topology.CELL_TOPOLOGIES
    is_nb201 = True
    is_per_cell = False
    num_cells = None  # one cell for every position, any depth

    @property
    def steps(self) -> int:
        return len(self.nodes)

    @property
    def edges(self) -> list[tuple[int, int, str]]:
        """``(node_state, input_state, op)`` for every edge, node by node."""
        return [(i + 1, j, op) for i, node in enumerate(self.nodes) for op, j in node]

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(op for _, _, op in self.edges)

    def skip_share(self) -> float:
        """Fraction of the edges that are ``skip_connect`` (1.0 for the all-skip cell)."""
        return sum(op == "skip_connect" for op in self.ops) / len(self.ops)

    def parameter_free_share(self) -> float:
        """Fraction of the edges whose op has no parameters (none, skip, pooling)."""
        return sum(op in PARAMETER_FREE for op in self.ops) / len(self.ops)

    def connected(self) -> bool:
        """Whether a path of edges other than ``none`` joins the cell input (state 0) to its
        output (the last node). Without one the cell outputs zeros whatever its input, and a
        network of such cells cannot learn (it re-trains to chance accuracy)."""
        reached = {0}
        for i, node in enumerate(self.nodes, start=1):
            if any(op != "none" and j in reached for op, j in node):
                reached.add(i)
        return len(self.nodes) in reached

    def to_string(self) -> str:
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|"
                        for node in self.nodes)

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def from_string(cls, text: str) -> NB201Genotype:
        """Parse ``|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...|``."""
        text = text.strip()
        parts = text.split("+")
        if not text or any(not (p.startswith("|") and p.endswith("|") and len(p) > 2)
                           for p in parts):
            raise ValueError(f"not an NB201 genotype string: {text!r}")
        nodes = []
        for part in parts:
            genes = part[1:-1].split("|")
            matched = [_GENE.fullmatch(g) for g in genes]
            if not all(matched):
                raise ValueError(f"NB201 genotype string: cannot read node {part!r}")
            nodes.append(tuple((m.group(1), int(m.group(2))) for m in matched if m))
        return cls(tuple(nodes))

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "nb201": self.to_string()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NB201Genotype:
        if not isinstance(data, dict) or "nb201" not in data:
            raise ValueError(f"nb201 genotype: expected a dict with 'nb201', got {data!r}")
        extra = set(data) - {"format", "nb201"}
        if extra:
            raise ValueError(f"nb201 genotype: unknown keys {sorted(extra)}")
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"genotype: unsupported format {data['format']!r}")
        return cls.from_string(str(data["nb201"]))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> NB201Genotype:
        return cls.from_dict(json.loads(text))


#: What DARTS-V1 and DARTS-V2 find on NAS-Bench-201 (its paper, Table 5): every edge skip.
NB201_DARTS = NB201Genotype(tuple(tuple(("skip_connect", j) for j in range(i + 1))
                                  for i in range(3)))
