"""The patch-repo flavour table: what each DARTS-family checkout looks like and what
``darts-amend patch-repo`` puts into it.

One :class:`Flavor` per supported repository (DARTS, PC-DARTS, P-DARTS, DrNAS, beta-DARTS,
DARTS-PT, SmoothDARTS, DARTS-, RobustDARTS) in :data:`FLAVORS`: where its search script, model
and architect files live, the markers that tell it from the others, the command to run
afterwards and the notes printed for it; the drop-in ``architect.py`` (:func:`dropin_text`), the
``--amend_*`` argparse block inserted into its search script (:func:`flags_block`), the markers
that recognise both in a patched checkout, and the edits a fork needs by hand
(:data:`PDARTS_EDIT`, :data:`BETA_DARTS_EDIT`, :data:`UNROLLED_CHOICE`).

Adding a flavour is one ``Flavor(...)`` entry here (and its adapter module); the checks and edits
that read the table are :mod:`darts_amend.adapters.patch_repo`.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "BETA_DARTS_EDIT",
    "DROPIN_MARKER",
    "FLAGS_BEGIN",
    "FLAGS_END",
    "FLAVORS",
    "Flavor",
    "PDARTS_EDIT",
    "UNROLLED_CHOICE",
    "dropin_text",
    "flags_block",
    "get_flavor",
]

# how a patched checkout is recognised: the first line of every drop-in, and the lines around
# the inserted flags block
DROPIN_MARKER = "# darts-amend drop-in"
FLAGS_BEGIN = "# >>> darts-amend flags (added by `darts-amend patch-repo`) >>>"
FLAGS_END = "# <<< darts-amend flags <<<"


@dataclasses.dataclass(frozen=True)
class Flavor:
    name: str  # CLI name: darts | pc_darts | pdarts
    repo: str  # upstream GitHub repository
    module: str  # darts_amend.adapters.<module>
    subdir: str  # where train_search.py lives inside the repository ("" = root)
    search_markers: tuple[str, ...]  # must all occur in train_search.py
    model_markers: tuple[str, ...]  # must all occur in model_search.py
    model_antimarkers: tuple[
        str, ...
    ]  # must not occur in model_search.py (tells the flavors apart)
    has_architect: bool  # upstream ships an architect.py
    run_command: str  # what to run afterwards
    # the forks keep their files elsewhere; paths relative to the folder of train_search.py
    architect_file: str = "architect.py"  # the file the drop-in replaces
    model_file: str = "model_search.py"  # checked for model_markers
    flags_file: str = "train_search.py"  # the file whose parse_args() gets the --amend_* flags
    architect_markers: tuple[str, ...] = ()  # must occur in the fork's own architect file
    architect_antimarkers: tuple[str, ...] = ()  # must not (tells forks with one layout apart)
    notes: str = ""  # printed by the CLI after patching: edits or choices the fork needs


FLAVORS: dict[str, Flavor] = {
    "darts": Flavor(
        name="darts",
        repo="quark0/darts",
        module="darts",
        subdir="cnn",
        search_markers=("from architect import Architect", "architect.step("),
        model_markers=("def arch_parameters", "alphas_normal"),
        model_antimarkers=("betas_normal",),
        has_architect=True,
        run_command="cd {dir} && python train_search.py --amend_eta 0.1",
    ),
    "pc_darts": Flavor(
        name="pc_darts",
        repo="yuhuixu1993/PC-DARTS",
        module="pc_darts",
        subdir="",
        search_markers=("from architect import Architect", "architect.step("),
        model_markers=("def arch_parameters", "betas_normal"),
        model_antimarkers=(),
        has_architect=True,
        run_command="cd {dir} && python train_search.py --amend_eta 0.1",
    ),
    "pdarts": Flavor(
        name="pdarts",
        repo="chenxin061/pdarts",
        module="p_darts",
        subdir="",
        search_markers=("optimizer_a", "switches_normal", "arch_parameters()"),
        model_markers=("def arch_parameters", "switches_normal"),
        model_antimarkers=(),
        has_architect=False,
        run_command="cd {dir} && python train_search.py --amend_eta 0.1 "
        "--add_layers 6 --add_layers 12 "
        "--dropout_rate 0.1 --dropout_rate 0.4 --dropout_rate 0.7",
    ),
}

_SDARTS_LAYOUT = dict(
    subdir="sota/cnn",
    search_markers=("from optimizers.darts.architect import Architect", "architect.step("),
    model_markers=("def arch_parameters", "alphas_normal"),
    model_antimarkers=(),
    has_architect=True,
    architect_file="../../optimizers/darts/architect.py",
)
_ROBUST_LAYOUT = dict(
    subdir="src/search",
    search_markers=("from src.search.architect import Architect", "architect.step("),
    model_markers=("def arch_parameters", "alphas_normal"),
    has_architect=True,
    flags_file="args.py",
)

# RobustDARTS' grid (scripts/DARTS_search.sh) passes --unrolled: second-order DARTS.
UNROLLED_CHOICE = """\
The fork's search scripts pass --unrolled (second-order DARTS). With darts-amend choose one:
  second-order DARTS through our estimator: keep --unrolled, add --amend_estimator unrolled
  Amended-DARTS:                               remove --unrolled (amended is the default)
--unrolled alone is refused with an error naming these two choices.
"""

BETA_DARTS_EDIT = """\
beta-DARTS' regulariser grows with the epoch. nasbench201/train_search.py passes it
(architect.step(..., optimizer, epoch, unrolled=args.unrolled)); sota/cnn/train_search.py does
not: there add `epoch` to train()'s parameters and to its call, and pass it to architect.step
(or call architect.set_epoch(epoch) at the start of each epoch); a step without an epoch is
refused rather than run without the regulariser.
"""

FLAVORS.update(
    {
        "drnas": Flavor(
            name="drnas",
            repo="xiangning-chen/DrNAS",
            module="drnas",
            subdir="DARTS-space",
            search_markers=("from architect import Architect", "architect.step(", "reg_type"),
            model_markers=("Dirichlet", "def pruning", "def wider"),
            model_antimarkers=(),
            has_architect=True,
            architect_file="../architect.py",
            run_command="cd {dir} && python train_search.py --amend_eta 0.1",
            notes="201-space/train_search*.py import the same architect.py; add the flags block "
            "there too to pass --amend_* to them.",
        ),
        "beta-darts": Flavor(
            name="beta-darts",
            repo="Sunshine-Ye/Beta-DARTS",
            module="beta_darts",
            subdir="nasbench201",
            search_markers=("from optimizers.darts.architect import Architect", "epoch, unrolled="),
            model_markers=("_arch_parameters",),
            model_antimarkers=(),
            has_architect=True,
            architect_file="../optimizers/darts/architect.py",
            model_file="model.py",
            architect_markers=("mlc_loss",),
            run_command="cd {dir}/.. && python nasbench201/train_search.py --amend_eta 0.1",
            notes=BETA_DARTS_EDIT,
        ),
        "darts-pt": Flavor(
            name="darts-pt",
            repo="ruocwang/darts-pt",
            module="darts_pt",
            subdir="sota/cnn",
            search_markers=("from nasbench201.architect_ig import Architect", "architect.step("),
            model_markers=("def arch_parameters", "alphas_normal"),
            model_antimarkers=(),
            has_architect=True,
            architect_file="../../nasbench201/architect_ig.py",
            architect_markers=("args.method",),
            run_command="cd {dir}/../.. && python sota/cnn/train_search.py --method darts-proj "
            "--amend_eta 0.1",
            notes="nasbench201/train_search.py imports the same architect_ig.py; add the flags "
            "block there too to pass --amend_* to it.",
        ),
        "sdarts": Flavor(
            name="sdarts",
            repo="xiangning-chen/SmoothDARTS",
            module="darts",
            architect_antimarkers=("mlc_loss",),
            run_command="cd {dir}/../.. && python sota/cnn/train_search.py "
            "--perturb_alpha pgd_linf --amend_eta 0.1",
            **_SDARTS_LAYOUT,
        ),
        "darts-minus": Flavor(
            name="darts-minus",
            repo="Meituan-AutoML/DARTS-",
            module="darts",
            model_antimarkers=(),
            run_command="cd {dir}/../.. && python src/search/train_search.py --auxiliary_skip "
            "--amend_eta 0.1",
            **{**_ROBUST_LAYOUT, "model_markers": ("def arch_parameters", "auxiliary_skip")},
        ),
        "robust-darts": Flavor(
            name="robust-darts",
            repo="automl/RobustDARTS",
            module="darts",
            model_antimarkers=("auxiliary_skip",),
            run_command="cd {dir}/../.. && python src/search/train_search.py --amend_eta 0.1",
            notes=UNROLLED_CHOICE,
            **_ROBUST_LAYOUT,
        ),
    }
)

# The P-DARTS edit (train_search.py): one architect per stage, replacing the inline first-order
# update.
PDARTS_EDIT = """\
In train_search.py (P-DARTS), three edits:

1. imports, next to `from model_search import Network`:
+from architect import Architect

2. in main(), inside the stage loop, right after `optimizer_a = torch.optim.Adam(...)`
   (the network and its alphas are rebuilt at every stage, so the architect must be
   re-created there too):
+        architect = Architect(model, args)
   and in both calls `train(train_queue, valid_queue, model, network_params, criterion,
   optimizer, optimizer_a, lr, train_arch=...)` replace `optimizer_a` by `architect`.

3. in train(), rename the parameter `optimizer_a` to `architect` and replace the inline update
-            optimizer_a.zero_grad()
-            logits = model(input_search)
-            loss_a = criterion(logits, target_search)
-            loss_a.backward()
-            nn.utils.clip_grad_norm_(model.module.arch_parameters(), args.grad_clip)
-            optimizer_a.step()
+            architect.step(input, target, input_search, target_search, lr, optimizer,
+                           unrolled=False)
   (the P-DARTS architect clips the alpha gradient to args.grad_clip, as the inline update did).
"""


def dropin_text(flavor: str) -> str:
    """The drop-in ``architect.py`` for a flavor (identical to
    integrations/<flavor>/architect.py)."""
    f = get_flavor(flavor)
    return (
        f"{DROPIN_MARKER} for {f.repo} (https://github.com/{f.repo}).\n"
        "# Written by `darts-amend patch-repo` (or copied from darts-amend's integrations/\n"
        "# folder); the original file, if there was one, is kept next to it as architect.py.orig.\n"
        '"""Amended-DARTS architect with the upstream interface, backed by\n'
        f"darts_amend.adapters.{f.module}.\n"
        "\n"
        "Flags read from args: --amend_eta (amending coefficient, default 0.1; 0 = first-order\n"
        "DARTS), --amend_estimator (default amended; `unrolled` together with --unrolled is\n"
        "second-order DARTS), --amend_mode (exact | finite_difference | forward_difference),\n"
        "--amend_chunks K and --amend_second_order_batch M (cost of the Hessian products),\n"
        "--amend_common_random_numbers auto|on|off (one random sample per estimate).\n"
        "Needs darts-amend in this environment: `pip install /path/to/darts-amend` (a checkout).\n"
        '"""\n'
        f"from darts_amend.adapters.{f.module} import Architect\n"
        "\n"
        '__all__ = ["Architect"]\n'
    )


def flags_block(indent: str = "") -> str:
    """The argparse lines patch-repo inserts into train_search.py (with the checkout's
    indentation)."""
    from darts_amend.estimators import ESTIMATORS  # lazy: keeps `darts-amend --help` light

    choices = ", ".join(repr(name) for name in ESTIMATORS)
    lines = [
        FLAGS_BEGIN,
        "parser.add_argument('--amend_eta', type=float, default=None, "
        "help='Amended-DARTS amending coefficient eta (default 0.1; 0 = first-order DARTS)')",
        f"parser.add_argument('--amend_estimator', type=str, default=None, choices=[{choices}], "
        "help='hypergradient estimator (default amended)')",
        "parser.add_argument('--amend_mode', type=str, default=None, "
        "choices=['exact', 'finite_difference', 'forward_difference'], "
        "help='Hessian products: exact (double backward, default), finite_difference (central) "
        "or forward_difference (one-sided, one pass fewer)')",
        "parser.add_argument('--amend_chunks', type=int, default=None, "
        "help='accumulate the Hessian products over K micro-batches (less memory)')",
        "parser.add_argument('--amend_second_order_batch', type=int, default=None, "
        "help='Hessian products on the first M training samples only (cheaper, noisier)')",
        "parser.add_argument('--amend_common_random_numbers', type=str, default=None, "
        "choices=['auto', 'on', 'off'], help='one random sample per hypergradient estimate for "
        "supernets that sample in forward (default auto: on when the forward draws random "
        "numbers)')",
        FLAGS_END,
    ]
    return "".join(f"{indent}{line}\n" for line in lines)


def get_flavor(name: str) -> Flavor:
    """The flavour called ``name``; ValueError naming the choices."""
    # '_' and '-' alike (beta_darts = beta-darts), as the integrations/ folders and the CLI
    # spell them
    key = str(name).strip().lower().replace("_", "-")
    for flavor_name, flavor in FLAVORS.items():
        if flavor_name.replace("_", "-") == key:
            return flavor
    raise ValueError(f"unknown flavor {name!r}; expected one of {', '.join(FLAVORS)}")
