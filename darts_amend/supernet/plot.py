"""Pictures of genotypes: a cell as PNG (matplotlib, Agg; no system Graphviz) and as Graphviz DOT
text, and a per-cell (S2) network as one PNG with an edge colour per operation, as in Figure 3 of
the Amended-DARTS paper (red: skip_connect, blue: sep_conv_3x3).

Only ``matplotlib.figure.Figure`` objects are used (never pyplot), so nothing global changes and no
display is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .genotypes import CellGenotype, Genotype, NB201Genotype
from .spaces import SearchSpace, get_space

__all__ = [
    "plot_genotype",
    "plot_cell",
    "plot_network",
    "plot_space",
    "genotype_to_dot",
    "cell_to_dot",
    "plot_nb201",
    "nb201_to_dot",
    "OP_COLORS",
]

logger = logging.getLogger(__name__)

#: Edge colour per operation (skip red and sep_conv_3x3 blue, as the paper's Figure 3).
OP_COLORS: dict[str, str] = {
    "skip_connect": "#d62728",
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17becf",
    "sep_conv_7x7": "#9edae5",
    "dil_conv_3x3": "#2ca02c",
    "dil_conv_5x5": "#98df8a",
    "max_pool_3x3": "#ff7f0e",
    "avg_pool_3x3": "#8c564b",
    "conv_7x1_1x7": "#9467bd",
    "none": "#7f7f7f",
    "noise": "#e377c2",
    "nor_conv_1x1": "#2ca02c",
    "nor_conv_3x3": "#1f77b4",
}


def _label(idx: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(idx, str(idx - 2))


def _layout(steps: int) -> dict[str, tuple[float, float]]:
    """Node positions: c_{k-1} above and c_{k-2} below on the left, intermediate nodes on a
    horizontal line, the output on the right."""
    pos = {"c_{k-2}": (0.0, -1.3), "c_{k-1}": (0.0, 1.3)}
    for i in range(steps):
        pos[str(i)] = (1.5 + 1.3 * i, 0.0)
    pos["c_{k}"] = (1.5 + 1.3 * steps + 0.3, 0.0)
    return pos


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # deferred: plotting is optional at import time

    return Figure(figsize=(width, height), dpi=100)


_HALF_W, _HALF_H = 0.32, 0.2  # node box half sizes (data units)


def _clip(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float]:
    """The point where the segment p -> q leaves the box around p."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = min(_HALF_W / abs(dx) if dx else float("inf"), _HALF_H / abs(dy) if dy else float("inf"))
    t = min(t * 1.15, 0.45)
    return p[0] + t * dx, p[1] + t * dy


def _edge_rad(src: str, dst: str, pos: dict[str, tuple[float, float]], k: int) -> float:
    """Straight edges unless they would pass through other nodes of the middle line."""
    (x0, y0), (x1, y1) = pos[src], pos[dst]
    if y0 == y1 == 0.0 and x1 - x0 > 1.4:  # skips over intermediate nodes: arc it
        return (0.35 if k % 2 else -0.35) * min(1.0, 1.3 / (x1 - x0)) * 1.4
    return 0.0


def _draw_cell(ax, cell: CellGenotype, *, labels: bool, font: float = 8.0) -> None:
    edges = [(src, k // 2, op) for k, (op, src) in enumerate(cell.edges)]
    _draw_graph(ax, cell.steps, edges, cell.concat, labels=labels, font=font)


def _draw_graph(
    ax,
    steps: int,
    edges: Sequence[tuple[int, int, str | None]],
    concat: Sequence[int],
    *,
    labels: bool,
    font: float = 8.0,
) -> None:
    """Draw a cell graph: ``edges`` are ``(input_state, node, op)``; op None = a grey
    candidate edge (search-space pictures)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    pos = _layout(steps)
    ax.set_aspect("equal")
    ax.axis("off")
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.set_ylim(-1.9, 1.9)

    def arrow(a: str, b: str, color: str, text: str | None, rad: float, lw: float) -> None:
        pa, pb = pos[a], pos[b]
        start, end = _clip(pa, pb), _clip(pb, pa)
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=7,
                color=color,
                lw=lw,
                connectionstyle=f"arc3,rad={rad}",
                shrinkA=0,
                shrinkB=0,
                zorder=2,
            )
        )
        if text:
            # a point of the quadratic Bezier that arc3 draws (control point c); labels of
            # edges leaving the inputs sit nearer their target so fans do not collide
            (x0, y0), (x1, y1) = start, end
            cx = (x0 + x1) / 2 + rad * (y1 - y0)
            cy = (y0 + y1) / 2 - rad * (x1 - x0)
            t = 0.68 if a.startswith("c_") else 0.5
            mx = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t**2 * x1
            my = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t**2 * y1
            if rad == 0.0 and y0 == y1:  # short edge along the middle line: label above it
                my += 0.3
            ax.text(
                mx,
                my,
                text,
                fontsize=font * 0.75,
                color=color,
                ha="center",
                va="center",
                zorder=5,
                bbox=dict(boxstyle="round,pad=0.08", fc="white", ec="none", alpha=0.85),
            )

    for k, idx in enumerate(concat):
        rad = 0.0 if idx == steps + 1 else 0.25 + 0.05 * k
        arrow(_label(idx), "c_{k}", "#c8c8c8", None, rad, 0.8)
    for k, (src, node, op) in enumerate(edges):
        a, b = _label(src), str(node)
        color = OP_COLORS.get(op, "black") if op is not None else "#555555"
        text = op if labels and op is not None else None
        arrow(a, b, color, text, _edge_rad(a, b, pos, k), 1.5 if op is not None else 1.0)
    for name, (x, y) in pos.items():
        is_io = name.startswith("c_")
        ax.add_patch(
            FancyBboxPatch(
                (x - _HALF_W, y - _HALF_H),
                2 * _HALF_W,
                2 * _HALF_H,
                boxstyle="round,pad=0.02",
                fc="#ffe9a8" if is_io else "#cfe2f3",
                ec="black",
                lw=0.7,
                zorder=3,
            )
        )
        ax.text(
            x, y, f"${name}$" if is_io else name, fontsize=font, ha="center", va="center", zorder=4
        )


def _draw_chain(ax, steps: int, edges: Sequence[tuple[int, int, str | None]], *, labels: bool,
                font: float = 8.0) -> None:
    """Draw an NB201 cell: states 0 (input) .. steps on a line, ``edges`` = ``(src, dst, op)``
    (op None = a grey candidate edge); the last state is the output."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    xs = [1.6 * i for i in range(steps + 1)]
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(-0.6, xs[-1] + 0.6)
    ax.set_ylim(-2.0, 2.0)
    for src, dst, op in edges:
        span = dst - src
        # longer edges arc, below from even states and above from odd ones, wider with the span
        rad = 0.0 if span == 1 else (1 if src % 2 == 0 else -1) * (0.45 + 0.1 * (span - 2))
        color = OP_COLORS.get(op, "black") if op is not None else "#555555"
        (x0, x1) = xs[src] + _HALF_W, xs[dst] - _HALF_W
        ax.add_patch(FancyArrowPatch((x0, 0.0), (x1, 0.0), arrowstyle="-|>", mutation_scale=7,
                                     color=color, lw=1.5 if op else 1.0, zorder=2,
                                     connectionstyle=f"arc3,rad={rad}"))
        if labels and op is not None:
            my = -rad * (x1 - x0) / 2 + (0.3 if rad == 0.0 else 0.0)
            ax.text((x0 + x1) / 2, my, op, fontsize=font * 0.75, color=color, ha="center",
                    va="center", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.08", fc="white", ec="none", alpha=0.85))
    for i, x in enumerate(xs):
        name = "in" if i == 0 else ("out" if i == steps else str(i))
        ax.add_patch(FancyBboxPatch((x - _HALF_W, -_HALF_H), 2 * _HALF_W, 2 * _HALF_H,
                                    boxstyle="round,pad=0.02", lw=0.7, ec="black", zorder=3,
                                    fc="#ffe9a8" if i in (0, steps) else "#cfe2f3"))
        ax.text(x, 0.0, name, fontsize=font, ha="center", va="center", zorder=4)


def plot_nb201(genotype: NB201Genotype, path: str | Path, title: str | None = None) -> Path:
    """Draw an NB201 cell (edges labelled and coloured by operation) to a PNG file."""
    path = Path(path)
    fig = _new_figure(1.6 * (genotype.steps + 1) + 0.8, 3.8)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.86))
    _draw_chain(ax, genotype.steps, [(j, i, op) for i, j, op in genotype.edges], labels=True)
    fig.suptitle(title or str(genotype), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def nb201_to_dot(genotype: NB201Genotype, name: str = "cell") -> str:
    """Graphviz DOT text of an NB201 cell."""
    last = genotype.steps
    lines = [f"digraph {name} {{", "  rankdir=LR;",
             '  node [style=filled, shape=rect, fontname="helvetica"];']
    for i in range(last + 1):
        fill = "darkseagreen2" if i == 0 else ("palegoldenrod" if i == last else "lightblue")
        lines.append(f'  "{i}" [fillcolor={fill}, label="{"in" if i == 0 else i}"];')
    for i, j, op in genotype.edges:
        lines.append(f'  "{j}" -> "{i}" [label="{op}", color="{OP_COLORS.get(op, "black")}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def plot_cell(cell: CellGenotype, path: str | Path, title: str | None = None) -> Path:
    """Draw one cell (edges labelled with their operations) to a PNG file."""
    path = Path(path)
    fig = _new_figure(1.1 * (2.2 + 1.3 * cell.steps), 3.6)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.9 if title else 1.0))
    _draw_cell(ax, cell, labels=True)
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_network(
    genotype: Genotype,
    path: str | Path,
    title: str | None = None,
    reduction_cells: Sequence[int] | None = None,
    columns: int = 5,
) -> Path:
    """Draw every cell of a per-cell genotype (S2) in one PNG, edges coloured by operation.

    ``reduction_cells`` marks cells as reductions in their titles (default: the DARTS positions
    ``n//3`` and ``2n//3``). A shared genotype is drawn as its normal and reduction cell.
    """
    path = Path(path)
    cells = list(genotype.cell_genotypes().items())
    n = len(cells)
    if reduction_cells is None:
        reduction_cells = (n // 3, 2 * n // 3) if genotype.is_per_cell else ()
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    fig = _new_figure(2.4 * cols, 1.4 * rows + 0.7)
    top = 1.0 - 0.45 / (1.4 * rows + 0.7)
    used = set()
    for k, (kind, cell) in enumerate(cells):
        r, c = divmod(k, cols)
        ax = fig.add_axes(
            (c / cols, top - (r + 1) * (top - 0.08) / rows, 1.0 / cols, (top - 0.08) / rows)
        )
        _draw_cell(ax, cell, labels=False, font=5.5)
        red = genotype.is_per_cell and k in set(reduction_cells)
        ax.set_title(f"{kind.replace('_', ' ')}{' (reduction)' if red else ''}", fontsize=8, pad=0)
        ax.axis("off")
        used.update(cell.ops)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([0], [0], color=OP_COLORS.get(op, "black"), lw=2, label=op) for op in sorted(used)
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_space(space: SearchSpace | str, path: str | Path, title: str | None = None) -> Path:
    """Draw a search space's cell: every candidate edge (each mixes all of the space's ops)."""
    spec = get_space(space)
    path = Path(path)
    edges = [(src, node, None) for node, src in spec.edges()]
    if spec.num_inputs == 1:  # one cell input (NB201): nodes in a chain
        fig = _new_figure(1.6 * (spec.steps + 1) + 0.8, 3.8)
        ax = fig.add_axes((0.0, 0.0, 1.0, 0.86))
        _draw_chain(ax, spec.steps, [(src, node + 1, None) for node, src in spec.edges()],
                    labels=False)
    else:
        fig = _new_figure(1.1 * (2.2 + 1.3 * spec.steps), 3.6)
        ax = fig.add_axes((0.0, 0.0, 1.0, 0.88))
        _draw_graph(ax, spec.steps, edges, spec.concat, labels=False)
    if title is None:
        sharing = ("own alphas per cell" if spec.per_cell else "one alpha set for all cells"
                   if spec.topology.one_alpha_set else "alphas shared by cell type")
        ops = (f"ops: {', '.join(spec.ops)}" if spec.edge_ops is None
               else f"{spec.ops_per_edge} ops per edge, from: {', '.join(spec.ops)}")
        title = f"{spec.name}: {spec.num_edges} edges x {spec.ops_per_edge} ops, {sharing}\n{ops}"
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def cell_to_dot(cell: CellGenotype, name: str = "cell", *, subgraph: bool = False) -> str:
    """Graphviz DOT text of one cell (``digraph``, or ``subgraph cluster_<name>`` to embed)."""
    p = f"{name}_" if subgraph else ""
    lines = [
        f"subgraph cluster_{name} {{" if subgraph else f"digraph {name} {{",
        f'  label="{name}";' if subgraph else "  rankdir=LR;",
        '  node [style=filled, shape=rect, fontname="helvetica"];',
    ]
    lines.append(f'  "{p}c_{{k-2}}" [fillcolor=darkseagreen2, label="c_{{k-2}}"];')
    lines.append(f'  "{p}c_{{k-1}}" [fillcolor=darkseagreen2, label="c_{{k-1}}"];')
    for i in range(cell.steps):
        lines.append(f'  "{p}{i}" [fillcolor=lightblue, label="{i}"];')
    lines.append(f'  "{p}c_{{k}}" [fillcolor=palegoldenrod, label="c_{{k}}"];')
    for pos_idx, (op, src) in enumerate(cell.edges):
        color = OP_COLORS.get(op, "black")
        lines.append(
            f'  "{p}{_label(src)}" -> "{p}{pos_idx // 2}" [label="{op}", color="{color}"];'
        )
    for idx in cell.concat:
        lines.append(f'  "{p}{_label(idx)}" -> "{p}c_{{k}}" [color=gray];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def genotype_to_dot(genotype: Genotype) -> str:
    """DOT text of a whole genotype: one cluster per cell kind (or per cell for S2)."""
    body = [
        cell_to_dot(cell, kind, subgraph=True) for kind, cell in genotype.cell_genotypes().items()
    ]
    return (
        "digraph genotype {\n  rankdir=LR;\n"
        + "".join("  " + line + "\n" for block in body for line in block.splitlines())
        + "}\n"
    )


def plot_genotype(
    genotype: Genotype, path_prefix: str | Path, title: str | None = None
) -> list[Path]:
    """Write the pictures of a genotype; returns the files written.

    Shared cells: ``<prefix>_normal.png``, ``<prefix>_reduce.png`` and a ``.dot`` next to each.
    Per-cell (S2): ``<prefix>_network.png`` (all cells, coloured edges) and ``<prefix>.dot``.
    NB201: ``<prefix>_cell.png`` and ``<prefix>_cell.dot``.
    """
    if not isinstance(genotype, (Genotype, NB201Genotype)):
        raise TypeError(f"plot_genotype needs a Genotype, got {type(genotype).__name__}")
    prefix = Path(path_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if isinstance(genotype, NB201Genotype):
        png = plot_nb201(genotype, prefix.with_name(f"{prefix.name}_cell.png"), title=title)
        dot = png.with_suffix(".dot")
        dot.write_text(nb201_to_dot(genotype))
        written += [png, dot]
    elif genotype.is_per_cell:
        written.append(
            plot_network(genotype, prefix.with_name(prefix.name + "_network.png"), title=title)
        )
        dot = prefix.with_name(prefix.name + ".dot")
        dot.write_text(genotype_to_dot(genotype))
        written.append(dot)
    else:
        for kind, cell in genotype.cell_genotypes().items():
            png = prefix.with_name(f"{prefix.name}_{kind}.png")
            plot_cell(cell, png, title=f"{title} - {kind}" if title else kind)
            dot = png.with_suffix(".dot")
            dot.write_text(cell_to_dot(cell, kind))
            written += [png, dot]
    logger.debug("wrote %s", ", ".join(str(p) for p in written))
    return written
