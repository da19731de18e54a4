"""The command line reads the library's registries: choices, estimator options, their defaults
and valid ranges agree with ``data.DATASETS``, ``supernet.SPACES``, ``estimators.ESTIMATORS``
and ``options.OPTIONS``; old flag spellings and stored configs keep working."""

from __future__ import annotations

import dataclasses
import math

import pytest

from darts_amend import estimators, options
from darts_amend.cli import build_parser, main
from darts_amend.cli.config import config_from_dict, config_to_dict
from darts_amend.cli.settings import (
    OPTION_FLAGS,
    OPTIONS_NOT_SETTINGS,
    SETTING_OPTIONS,
    SearchConfig,
    TrainConfig,
    estimator_options,
    option_value,
)
from darts_amend.data import DATASETS
from darts_amend.supernet import SPACES

FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}


def test_choices_are_the_registries() -> None:
    assert FIELDS["dataset"].metadata["choices"] == DATASETS
    assert {f.name: f for f in dataclasses.fields(TrainConfig)}["dataset"].metadata[
        "choices"] == DATASETS
    assert FIELDS["space"].metadata["choices"] == tuple(SPACES)
    assert FIELDS["estimator"].metadata["choices"] == tuple(estimators.ESTIMATORS)
    assert FIELDS["hvp_mode"].metadata["choices"] == options.OPTIONS["mode"].choices
    parser = build_parser()
    for name in SPACES:  # and argparse takes every one of them
        assert parser.parse_args(["search", "--space", name]).space == name
    for name in estimators.ESTIMATORS:
        assert parser.parse_args(["search", "--estimator", name]).estimator == name


def test_every_estimator_option_is_a_setting_or_says_where_it_comes_from() -> None:
    mapped = set(SETTING_OPTIONS.values())
    assert len(mapped) == len(SETTING_OPTIONS)  # one setting per option
    assert not mapped & set(OPTIONS_NOT_SETTINGS)
    assert mapped | set(OPTIONS_NOT_SETTINGS) == set(options.OPTIONS)
    assert OPTION_FLAGS == {o: f"--{s}" for s, o in SETTING_OPTIONS.items()}
    # the drifted names, one table
    assert {s: o for s, o in SETTING_OPTIONS.items() if s != o} == {
        "hvp_mode": "mode", "fd_r": "r", "hvp_chunks": "chunks", "cg_iterations": "iterations",
        "cg_damping": "damping", "neumann_terms": "terms", "neumann_gamma": "gamma"}


@pytest.mark.parametrize("setting", sorted(SETTING_OPTIONS))
def test_setting_default_and_range_are_the_registrys(setting: str) -> None:
    option = SETTING_OPTIONS[setting]
    spec = options.OPTIONS[option]
    f = FIELDS[setting]
    assert option_value(setting, f.default) == spec.default
    valid = f.metadata["valid"]
    if spec.kind in ("flag", "choice"):
        assert valid is None
        return
    # the same values pass on the command line and in the library (0 -> None for a sub-batch)
    low = valid.low
    probes = [int(low) - 1, int(low), int(low) + 1, 10**6] if spec.kind in (
        "count", "sub_batch") else [
        low - 0.5, low - 1e-9, low, low + 1e-9, low + 0.5, 1e6]
    for value in probes:
        try:
            spec.check(option, option_value(setting, value))
            library = True
        except ValueError:
            library = False
        assert (value in valid) == library, (setting, value)
    assert math.isinf(valid.high)


@pytest.mark.parametrize("name", sorted(estimators.ESTIMATORS))
def test_estimator_options_are_what_the_estimator_takes(name: str) -> None:
    opts = estimator_options(SearchConfig(estimator=name))
    accepted = options.ESTIMATOR_OPTIONS[name]
    assert set(opts) == set(accepted) - set(OPTIONS_NOT_SETTINGS)
    assert options.validate_options(name, opts) == opts
    assert opts == {k: v for k, v in options.estimator_options(name).items() if k in opts}


def test_old_spellings_and_stored_configs_keep_working() -> None:
    parser = build_parser()
    args = parser.parse_args(["search", "--amend_eta", "0.3", "--amend_chunks", "2",
                              "--amend_second_order_batch", "8", "--hvp-mode",
                              "finite_difference", "--fd-r", "0.05"])
    assert (args.eta, args.hvp_chunks, args.second_order_batch, args.hvp_mode, args.fd_r) == (
        0.3, 2, 8, "finite_difference", 0.05)
    dashed = parser.parse_args(["search", "--amend-eta", "0.3", "--amend-chunks", "2",
                                "--amend-second-order-batch", "8"])
    assert (dashed.eta, dashed.hvp_chunks, dashed.second_order_batch) == (0.3, 2, 8)
    stored = config_to_dict(SearchConfig(second_order_batch=0, cg_iterations=10))
    assert {"hvp_mode", "fd_r", "hvp_chunks", "second_order_batch", "cg_iterations",
            "cg_damping", "neumann_terms", "neumann_gamma"} <= set(stored)
    cfg = config_from_dict(SearchConfig, stored, "the stored config.json")
    assert estimator_options(cfg)["second_order_batch"] is None  # 0 = the whole batch
    cfg = SearchConfig(second_order_batch=16, hvp_chunks=4)
    assert (estimator_options(cfg)["second_order_batch"], estimator_options(cfg)["chunks"]) == (
        16, 4)


def test_an_estimator_option_the_estimator_does_not_read_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert main(["search", "--estimator", "first_order", "--no-fast_depthwise",
                 "--output", str(out)]) == 2
    assert ("--fast_depthwise applies to the estimators with Hessian products only (got "
            "--estimator first_order)") in capsys.readouterr().err
    assert main(["search", "--neumann_gamma", "0.5", "--output", str(out)]) == 2
    assert ("--neumann_gamma applies to --estimator implicit_neumann only (got --estimator "
            "amended)") in capsys.readouterr().err
    assert not out.exists()


def test_help_shows_the_registry_defaults_and_ranges(capsys) -> None:
    assert main(["search", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[0.01; > 0]" in text  # neumann_gamma and fd_r: strict bounds from the registry
    assert "[10; >= 1]" in text  # cg_iterations, neumann_terms
    assert "one of " + ", ".join(estimators.ESTIMATORS) in text


def test_every_cell_topology_has_a_retraining_network() -> None:
    from darts_amend.cli.train import TRAIN_NETWORKS
    from darts_amend.supernet import CELL_TOPOLOGIES, DARTS_V2, Genotype, NB201Genotype

    assert set(TRAIN_NETWORKS) == set(CELL_TOPOLOGIES)
    assert {space.cell for space in SPACES.values()} <= set(TRAIN_NETWORKS)
    assert (Genotype.cell_topology, DARTS_V2.cell_topology, NB201Genotype.cell_topology) == (
        "darts", "darts", "nb201")
    assert TRAIN_NETWORKS["nb201"][1]("cifar10") == 5
    assert TRAIN_NETWORKS["darts"][1]("cifar10") == 20
    assert TRAIN_NETWORKS["darts"][1]("imagenet") == 14


def test_help_shows_auto_for_defaults_the_help_text_explains():
    """A setting whose default is chosen at run time shows "[auto ...]" when its help says how
    (threads: torch's choice; layers: by space), "[dataset default ...]" otherwise."""
    import argparse

    from darts_amend.cli.config import add_config_flags
    from darts_amend.cli.settings import SearchConfig

    parser = argparse.ArgumentParser()
    add_config_flags(parser, SearchConfig)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["threads"].endswith("[auto; >= 1]"), helps["threads"]
    assert helps["layers"].endswith("[auto; >= 1]"), helps["layers"]
    assert helps["data"].endswith("[dataset default]"), helps["data"]
    assert helps["epochs"].endswith("[100; >= 1]"), helps["epochs"]


def test_config_file_keys_take_old_spellings_once(tmp_path, capsys) -> None:
    from darts_amend.cli.config import CLIError, build_config

    path = tmp_path / "c.yaml"
    path.write_text("amend_eta: 0.3\namend-chunks: 2\nsecond_order_batch: 8\n")
    cfg = build_config(SearchConfig, {}, {}, config_file=str(path))
    assert (cfg.eta, cfg.hvp_chunks, cfg.second_order_batch) == (0.3, 2, 8)
    path.write_text("eta: 0.3\namend_eta: 0.5\n")  # one setting, two spellings: refused
    with pytest.raises(CLIError, match="'amend_eta' sets 'eta' a second time"):
        build_config(SearchConfig, {}, {}, config_file=str(path))
    out = tmp_path / "o"
    assert main(["search", "--config", str(path), "--output", str(out)]) == 2
    assert "sets 'eta' a second time" in capsys.readouterr().err and not out.exists()
