"""Parsing of the ``tokenreduce`` lmms-eval model arguments (no lmms-eval needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tokenreduce as tr
from tokenreduce.errors import ConfigError, ConfigTypeError, MissingDependencyError
from tokenreduce.integrations.lmms_eval_args import parse_model_args, parse_value

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("False", False), ("none", None), ("3", 3), ("-2", -2), ("0.3", 0.3), ("1e-3", 1e-3),
    ("st_simdiff", "st_simdiff"), ("a/b.yaml", "a/b.yaml"),
])
def test_parse_value_types(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_strategy_and_fields_go_to_the_reducer_typed() -> None:
    args = parse_model_args({"pretrained": "m", "strategy": "random", "ratio": "0.3", "seed": "7",
                             "max_frames_num": "64", "dtype": "bfloat16", "batch_size": 2,
                             "attn_implementation": "sdpa"})
    assert args.reducer == {"name": "random", "ratio": 0.3, "seed": 7}
    assert args.run.max_frames_num == 64 and args.run.dtype == "bfloat16" and args.run.batch_size == 2
    assert args.run.attn_implementation == "sdpa"
    reducer = tr.build(args.reducer)
    assert reducer.config.ratio == 0.3 and reducer.config.seed == 7


def test_values_already_parsed_by_lmms_eval_are_accepted() -> None:
    args = parse_model_args({"pretrained": "m", "strategy": "uniform", "ratio": 0.5, "trust_remote_code": True})
    assert args.reducer == {"name": "uniform", "ratio": 0.5} and args.run.trust_remote_code is True


def test_dotted_keys_build_nested_component_dicts() -> None:
    args = parse_model_args({"pretrained": "m", "strategy": "pipe", "community": "leiden",
                             "community.resolution": "0.5", "graph.k": "4"})
    assert args.reducer == {"name": "pipe", "community": {"name": "leiden", "resolution": 0.5},
                            "graph": {"k": 4}}


def test_strategy_none_means_no_reduction() -> None:
    assert parse_model_args({"pretrained": "m", "strategy": "none"}).reducer is None
    with pytest.raises(ConfigError, match="takes no strategy fields"):
        parse_model_args({"pretrained": "m", "strategy": "none", "ratio": 0.3})


def test_config_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "reducer.json"
    path.write_text(json.dumps({"name": "random", "ratio": 0.5, "seed": 1}))
    args = parse_model_args({"pretrained": "m", "config": str(path), "ratio": "0.25"})
    assert args.reducer == {"name": "random", "ratio": 0.25, "seed": 1}
    assert tr.build(args.reducer).config.ratio == 0.25


@pytest.mark.parametrize(("args", "error", "match"), [
    ({"strategy": "random"}, ConfigError, "pretrained"),
    ({"pretrained": "m"}, ConfigError, "strategy=<name>"),
    ({"pretrained": "m", "strategy": "random", "config": "x.yaml"}, ConfigError, "not both"),
    ({"pretrained": "m", "strategy": "random", "dtype": "float8"}, ConfigError, "dtype"),
    ({"pretrained": "m", "strategy": "random", "attn_implementation": "magic"}, ConfigError, "attn_implementation"),
    ({"pretrained": "m", "strategy": "random", "max_frames_num": "0"}, ConfigError, "max_frames_num"),
    ({"pretrained": "m", "strategy": "random", "batch_size": "two"}, ConfigTypeError, "batch_size"),
    ({"pretrained": "m", "strategy": "random", "trust_remote_code": "yes"}, ConfigTypeError, "trust_remote_code"),
    ({"pretrained": "m", "strategy": 3}, ConfigTypeError, "strategy"),
])
def test_bad_arguments_name_the_argument(args: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        parse_model_args(args)


def test_unknown_strategy_field_is_rejected_by_the_strategy_config() -> None:
    args = parse_model_args({"pretrained": "m", "strategy": "random", "ratoi": "0.3"})
    with pytest.raises(ConfigError, match="ratoi"):
        tr.build(args.reducer)


def test_missing_lmms_eval_names_the_extra() -> None:
    code = ("import sys\n"
            "for name in [n for n in sys.modules if n == 'lmms_eval' or n.startswith('lmms_eval.')]:\n"
            "    del sys.modules[name]\n"
            "sys.modules['lmms_eval'] = None\n"
            "from tokenreduce.errors import MissingDependencyError\n"
            "try:\n"
            "    import tokenreduce.integrations.lmms_eval\n"
            "except MissingDependencyError as exc:\n"
            "    print('MISSING:', exc)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={"PYTHONPATH": str(REPO), "PATH": ""}, check=False)
    assert "MISSING:" in completed.stdout, completed.stderr[-2000:]
    assert "pip install 'tokenreduce[eval]'" in completed.stdout
    assert issubclass(MissingDependencyError, ImportError)
