"""Hostile and odd inputs at the public entry points: ``VisualTokens``, ``Reduction``, ``build`` /
``load_config`` and plugin discovery (``tr.apply``'s rows are in tests/adapters/test_apply_bad_inputs.py).

Each row is one bad input and what must happen: a tokenreduce error (``tr.TokenReduceError``) whose
message names the culprit (the argument, field, file or plugin) and stays short. A new parameter is
covered by adding a row. Rows that could blow up (time, memory, recursion: alias bombs, deep nesting,
huge integers, big files) run together in one subprocess under CPU-time and address-space limits.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from plugins import forget_plugins, write_plugin

import tokenreduce as tr
from tokenreduce.adapters.apply import find_adapter
from tokenreduce.config_files import MAX_CONFIG_BYTES
from tokenreduce.errors import InputError, InputTypeError, PluginError
from tokenreduce.graph import TemporalDifference

MESSAGE_LIMIT = 1000  # no message renders an unbounded value


def expect(call: Callable[[], Any], error: type[BaseException], names: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, tr.TokenReduceError), f"{type(info.value).__name__}: {message}"
    assert len(message) < MESSAGE_LIMIT, message[:300]
    missing = [name for name in names if name not in message]
    assert not missing, f"message does not name {missing}: {message}"


def row(id: str, call: Callable[[], Any], error: type[BaseException], *names: str) -> Any:
    return pytest.param(call, error, names, id=id)


# ----- VisualTokens ------------------------------------------------------------------------------
def x(b: int = 2, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.randn(b, 2, 3, 4, 5, dtype=dtype, device=device)


def with_nan_at(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


def padding_mask(b: int = 2) -> torch.Tensor:
    valid = torch.ones(b, 2, 3, 4, dtype=torch.bool)
    valid[b - 1, 1] = False
    return valid


VISUAL_TOKENS = [
    row("features-list", lambda: tr.VisualTokens([[1.0]]), InputTypeError, "features", "list"),
    row("features-rank-4", lambda: tr.VisualTokens(torch.randn(2, 3, 4, 5)), InputError, "features", "rank 4"),
    row("features-int", lambda: tr.VisualTokens(x().long()), InputTypeError, "features", "int64"),
    row("features-nan", lambda: tr.VisualTokens(with_nan_at(x())), InputError, "features", "NaN"),
    row("features-inf-fp16", lambda: tr.VisualTokens(with_nan_at(x(dtype=torch.float16), float("inf"))),
        InputError, "features", "inf"),
    row("features-meta", lambda: tr.VisualTokens(x(device="meta")), InputError, "features", "meta"),
    row("features-empty-video", lambda: tr.VisualTokens(torch.randn(1, 0, 3, 4, 5)), InputError, "empty T"),
    row("valid-float", lambda: tr.VisualTokens(x(), torch.ones(2, 2, 3, 4)), InputTypeError, "valid", "bool"),
    row("valid-list", lambda: tr.VisualTokens(x(), [[True]]), InputTypeError, "valid", "list"),
    row("valid-broadcast", lambda: tr.VisualTokens(x(), padding_mask(1)), InputError, "valid", "(1, 2, 3, 4)"),
    row("valid-meta", lambda: tr.VisualTokens(x(), padding_mask().to("meta")), InputError, "valid", "meta"),
    row("valid-empty-sample", lambda: tr.VisualTokens(x(), padding_mask() & torch.tensor([True, False])
                                                      .view(2, 1, 1, 1)), InputError, "valid", "[1]"),
    row("importance-nan-at-valid", lambda: tr.VisualTokens(x(), importance=with_nan_at(torch.rand(2, 2, 3, 4))),
        InputError, "importance", "NaN"),
    row("importance-int", lambda: tr.VisualTokens(x(), importance=torch.ones(2, 2, 3, 4, dtype=torch.long)),
        InputTypeError, "importance", "floating"),
    row("keys-nan-at-valid", lambda: tr.VisualTokens(x(), signals={"keys": with_nan_at(torch.randn(2, 2, 3, 4, 6))}),
        InputError, "signals['keys']", "NaN"),
    row("embeddings-inf-at-valid", lambda: tr.VisualTokens(
        x(), padding_mask(), signals={"embeddings": with_nan_at(x(), -float("inf"))}),
        InputError, "signals['embeddings']", "inf"),
    row("keys-list", lambda: tr.VisualTokens(x(), signals={"keys": [1.0]}), InputTypeError, "signals['keys']"),
    row("keys-wrong-grid", lambda: tr.VisualTokens(x(), signals={"keys": torch.randn(2, 2, 3, 6)}), InputError,
        "signals['keys']", "shape"),
    row("signal-name-not-str", lambda: tr.VisualTokens(x(), signals={1: x()}), InputTypeError, "signals keys"),
    row("num_layers-absurd", lambda: tr.VisualTokens(x(), num_layers=10**400), InputError, "num_layers",
        "401 digits"),
    row("num_layers-bool", lambda: tr.VisualTokens(x(), num_layers=True), InputError, "num_layers"),
    row("budget_base-shape", lambda: tr.VisualTokens(x(), budget_base=torch.ones(3)), InputError, "budget_base"),
]


@pytest.mark.parametrize("call, error, names", VISUAL_TOKENS)
def test_visual_tokens_rejects(call, error, names):
    expect(call, error, names)


def test_padding_may_hold_anything_in_importance_and_signals():
    valid = padding_mask()
    junk = torch.full((2, 2, 3, 4), float("nan")).where(~valid, torch.rand(2, 2, 3, 4))
    keys = torch.full((2, 2, 3, 4, 6), -float("inf")).where(~valid.unsqueeze(-1), torch.randn(2, 2, 3, 4, 6))
    tokens = tr.VisualTokens(x(), valid, junk, signals={"keys": keys, "embeddings": x()})
    assert tokens.signals["keys"] is keys


# ----- Reduction ----------------------------------------------------------------------------------
KEEP = torch.tensor([[True, False, True, False], [False, True, True, True]])
GRID = (1, 2, 2)


def reduction(**changes: Any) -> tr.Reduction:
    fields: dict[str, Any] = {"keep_mask": KEEP, "grid": GRID}
    fields.update(changes)
    return tr.Reduction(fields.pop("keep_mask"), **fields)


REDUCTION = [
    row("keep_mask-list", lambda: reduction(keep_mask=KEEP.tolist()), InputTypeError, "keep_mask", "list"),
    row("keep_mask-float", lambda: reduction(keep_mask=KEEP.float()), InputError, "keep_mask", "float32"),
    row("keep_mask-meta", lambda: reduction(keep_mask=KEEP.to("meta")), InputError, "keep_mask", "meta"),
    row("keep_mask-vs-grid", lambda: reduction(grid=(1, 2, 3)), InputError, "keep_mask", "grid"),
    row("roles-broadcast", lambda: reduction(roles=torch.zeros(1, 4, dtype=torch.int32)), InputError, "roles",
        "(2, 4)", "(1, 4)"),
    row("roles-float", lambda: reduction(roles=torch.zeros(2, 4)), InputTypeError, "roles", "float32"),
    row("roles-list", lambda: reduction(roles=[[0] * 4] * 2), InputTypeError, "roles", "list"),
    row("valid-broadcast", lambda: reduction(valid=torch.ones(1, 4, dtype=torch.bool)), InputError, "valid",
        "(1, 4)"),
    row("valid-float", lambda: reduction(valid=torch.ones(2, 4)), InputTypeError, "valid", "float32"),
    row("valid-list", lambda: reduction(valid=[[True] * 4] * 2), InputTypeError, "valid", "list"),
    row("keeps-padding", lambda: reduction(valid=~KEEP), InputError, "keep_mask", "padding"),
    row("grid-list", lambda: reduction(grid=[1, 2, 2]), InputTypeError, "grid"),
    row("grid-negative", lambda: reduction(grid=(1, -2, -2)), InputTypeError, "grid"),
    row("features-list", lambda: reduction(features=[[0.0]]), InputTypeError, "features", "list"),
    row("features-shape", lambda: reduction(features=torch.zeros(1, 4, 3)), InputError, "features"),
    row("extra-rank", lambda: reduction(extra=torch.zeros(2, 3)), InputError, "extra"),
    row("extra_valid-shape", lambda: reduction(extra=torch.zeros(2, 3, 5), extra_valid=torch.ones(2, 2,
                                                                                                   dtype=torch.bool)),
        InputError, "extra_valid"),
]


@pytest.mark.parametrize("call, error, names", REDUCTION)
def test_reduction_rejects(call, error, names):
    expect(call, error, names)


# ----- build ---------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
BUILD = [
    row("ratio-huge-int", lambda: tr.build("random", ratio=10**400), tr.ConfigError, "random.ratio", "401 digits"),
    row("ratio-nan", lambda: tr.build("random", ratio=NAN), tr.ConfigError, "random.ratio", "(0, 1]", "nan"),
    row("ratio-inf", lambda: tr.build("uniform", ratio=INF), tr.ConfigError, "uniform.ratio", "(0, 1]", "inf"),
    row("ratio-optional-nan", lambda: tr.build("st_simdiff", ratio=NAN), tr.ConfigError, "st_simdiff.ratio",
        "(0, 1]", "nan"),
    row("cost-optional-inf", lambda: tr.build("st_simdiff", cost=-INF), tr.ConfigError, "st_simdiff.cost",
        "(0, 1]", "-inf"),
    row("count-huge-int", lambda: tr.build("random", count=10**400), tr.ConfigError, "random.count", "int64"),
    row("seed-beyond-int64", lambda: tr.build("random", seed=2**63), tr.ConfigError, "random.seed",
        "[-2**63, 2**63 - 1]", "9223372036854775808"),
    row("seed-below-int64", lambda: tr.build("random", seed=-(2**63) - 1), tr.ConfigError, "random.seed", "int64"),
    row("seed-str", lambda: tr.build("random", seed="0"), tr.ConfigTypeError, "random.seed", "str"),
    row("louvain-seed-beyond-int64", lambda: tr.build("st_simdiff", community={"name": "louvain", "seed": 2**64}),
        tr.ConfigError, "louvain.seed", "int64"),
    row("leiden-seed-beyond-int64", lambda: tr.build_component("community", "leiden", seed=2**64),
        tr.ConfigError, "leiden.seed", "int64"),
    row("louvain-resolution-inf", lambda: tr.build_component("community", "louvain", resolution=INF),
        tr.ConfigError, "louvain.resolution", "inf"),
    row("tau_diff-inf", lambda: tr.build("st_simdiff", tau_diff=INF), tr.ConfigError, "st_simdiff.tau_diff",
        "[-1, 1]", "inf"),
    row("tau_diff-minus-inf", lambda: tr.build("st_simdiff_select", tau_diff=-INF), tr.ConfigError,
        "st_simdiff_select.tau_diff", "[-1, 1]"),
    row("tau_diff-nan-reference", lambda: tr.build("st_simdiff_reference_stage1", tau_diff=NAN), tr.ConfigError,
        "st_simdiff_reference_stage1.tau_diff", "[-1, 1]", "nan"),
    row("tau_diff-event-detector", lambda: TemporalDifference(tau_diff=INF),
        tr.ConfigError, "temporal_difference.tau_diff", "[-1, 1]"),
    row("tau_sim-nan", lambda: tr.build("st_simdiff", tau_sim=NAN), tr.ConfigError, "st_simdiff.tau_sim",
        "[-1, 1]", "nan"),
    row("percentile-optional-nan", lambda: tr.build("st_simdiff", event_percentile=NAN), tr.ConfigError,
        "st_simdiff.event_percentile", "[0, 100]", "nan"),
    row("prune_ratio-optional-nan", lambda: tr.build("fastv", prune_ratio=NAN), tr.ConfigError,
        "fastv.prune_ratio", "[0, 1)", "nan"),
    row("evs-prune_ratio-optional-nan", lambda: tr.build("evs", prune_ratio=NAN), tr.ConfigError,
        "evs.prune_ratio", "[0, 1)", "nan"),
    row("similarity-bound-inf", lambda: tr.build("framefusion", similarity_lower_bound=INF), tr.ConfigError,
        "framefusion.similarity_lower_bound", "[-1, 1]"),
    row("layer-huge-int", lambda: tr.build("fastv", layer=10**400), tr.ConfigError, "fastv.layer", "int64"),
    row("position-huge-str", lambda: tr.build("framefusion", position="x" * 10**6), tr.ConfigError,
        "framefusion.position"),
    row("name-huge-str", lambda: tr.build("y" * 10**6), tr.UnknownNameError, "unknown strategy"),
    row("name-int", lambda: tr.build({"name": 3}), tr.ConfigTypeError, "strategy name", "int"),
    row("many-unknown-keys", lambda: tr.build({"name": "random", **{f"k{i}": i for i in range(10**4)}}),
        tr.ConfigError, "unknown key", "10000 in all"),
    row("non-str-keys", lambda: tr.build({"name": "random", 1: 2, (3,): 4}), tr.ConfigError, "unknown key"),
    row("budget-ratio-huge-int", lambda: tr.Budget(ratio=10**400), tr.ConfigError, "ratio", "(0, 1]"),
    row("cost-formula-huge-cost", lambda: tr.cost_prune_ratio([], 10**400, 28), tr.ConfigError, "cost", "(0, 1]"),
    row("cost-formula-huge-layers", lambda: tr.cost_prune_ratio([], 0.3, 10**400), tr.ConfigError, "num_layers"),
]


@pytest.mark.parametrize("call, error, names", BUILD)
def test_build_rejects(call, error, names):
    expect(call, error, names)


# ----- load_config / build(path): in one subprocess with resource limits -----------------------------
def billion_laughs(field_name: str) -> str:
    """345 bytes of YAML whose last alias expands to 10^9 strings, as the value of ``field_name``."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + f"\nname: random\n{field_name}: *i\n"


@dataclass(frozen=True)
class FileCase:
    """A config file and what is done with it (``build`` or ``load``), expected to fail naming ``names``."""

    filename: str
    content: bytes
    names: tuple[str, ...]
    action: str = "build"
    error: str = "ConfigError"


FILES = {
    "yaml-billion-laughs-typed-field": FileCase("laughs.yaml", billion_laughs("ratio").encode(),
                                                ("laughs.yaml", "alias")),
    "yaml-billion-laughs-seed": FileCase("seed.yaml", billion_laughs("seed").encode(), ("seed.yaml", "alias")),
    "yaml-billion-laughs-unknown-key": FileCase("unknown.yaml", billion_laughs("surprise").encode(),
                                                ("unknown.yaml", "alias")),
    "yaml-recursive-alias": FileCase("loop.yaml", b"name: random\nratio: &r [*r]\n", ("loop.yaml", "recursive")),
    "yaml-flow-list-5000-deep": FileCase("deep.yaml", b"name: random\nratio: " + b"[" * 5000 + b"]" * 5000 + b"\n",
                                         ("deep.yaml", "64 levels")),
    "yaml-alias-chain-deep": FileCase("chain.yaml", ("a0: &a0 [1]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200)) + "name: random\n").encode(), ("chain.yaml", "levels")),
    "json-100000-deep": FileCase("deep.json", b'{"name": "random", "ratio": ' + b"[" * 100000 + b"]" * 100000 + b"}",
                                 ("deep.json", "64 levels")),
    "json-5000-digit-int": FileCase("digits.json", b'{"name": "random", "seed": ' + b"7" * 5000 + b"}",
                                    ("digits.json", "'seed'", "5000 digits")),
    "yaml-5000-digit-int": FileCase("digits.yaml", b"name: random\nseed: " + b"7" * 5000 + b"\n",
                                    ("digits.yaml", "'seed'", "5000 digits")),
    "json-5000-digit-int-in-list": FileCase("list.json", b'{"name": "pipeline", "steps": [1, ' + b"7" * 5000 + b"]}",
                                            ("list.json", "'steps'[1]", "5000 digits")),
    "json-ratio-401-digits": FileCase("ratio401.json", b'{"name": "random", "ratio": 1' + b"0" * 400 + b"}",
                                      ("ratio401.json", "'ratio'", "401 digits")),
    "yaml-ratio-401-digits": FileCase("ratio401.yaml", b"name: random\nratio: 1" + b"0" * 400 + b"\n",
                                      ("ratio401.yaml", "'ratio'", "401 digits")),
    "json-seed-beyond-int64": FileCase("seed.json", b'{"name": "random", "seed": 18446744073709551616}',
                                       ("random.seed", "int64")),
    "json-ratio-1e400": FileCase("ratio.json", b'{"name": "random", "ratio": 1e400}', ("random.ratio", "(0, 1]")),
    "invalid-utf8": FileCase("latin1.yaml", b"name: random\n# caf\xe9\n", ("latin1.yaml", "UTF-8", "byte 18")),
    "json-duplicate-key": FileCase("dup.json", b'{"name": "random", "ratio": 0.5, "ratio": 0.9}',
                                   ("dup.json", "duplicate key 'ratio'")),
    "yaml-duplicate-key": FileCase("dup.yaml", b"name: random\nratio: 0.5\nseed: 1\nratio: 0.9\n",
                                   ("dup.yaml", "duplicate key 'ratio'", "line 4")),
    "yaml-duplicate-nested-key": FileCase("dupn.yaml", b"name: st_simdiff\ncommunity:\n  name: louvain\n  name: leiden\n",
                                          ("dupn.yaml", "duplicate key 'name'")),
    "yaml-bad-date": FileCase("date.yaml", b"name: random\nwhen: 2020-13-45\n", ("date.yaml", "invalid YAML")),
    "too-big": FileCase("big.json", b'{"name": "random", "pad": "' + b"x" * MAX_CONFIG_BYTES + b'"}',
                        ("big.json", "bytes")),
    "not-a-mapping": FileCase("list.yaml", b"- 1\n- 2\n", ("list.yaml", "mapping"), action="load"),
    "directory": FileCase("folder.yaml", b"", ("folder.yaml", "does not exist"), action="load"),
}

RUN_CASES = textwrap.dedent('''
    import json, sys, time
    import tokenreduce as tr
    for case_id, path, action in json.loads(sys.argv[1]):
        try:
            tr.build(path) if action == "build" else tr.load_config(path)
            outcome = {"error": None}
        except BaseException as exc:  # report MemoryError, RecursionError ... as they are
            outcome = {"error": type(exc).__name__, "message": str(exc)[:2000],
                       "tokenreduce": isinstance(exc, tr.TokenReduceError)}
        print(json.dumps({"id": case_id, **outcome}), flush=True)
''')

CPU_SECONDS, MEMORY_BYTES = 120, 3 << 30


def limited() -> None:
    """In the child: cap CPU time and address space (an alias bomb or runaway recursion dies here)."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


@pytest.fixture(scope="module")
def file_outcomes(tmp_path_factory) -> dict[str, Any]:
    """Every FILES case, run in one resource-limited subprocess; ``id -> outcome`` plus its stderr."""
    folder = tmp_path_factory.mktemp("configs")
    jobs = []
    for case_id, case in FILES.items():
        path = folder / case_id / case.filename
        path.parent.mkdir()
        if case_id == "directory":
            path.mkdir()
        else:
            path.write_bytes(case.content)
        jobs.append((case_id, str(path), case.action))
    env = {**os.environ, "PYTHONPATH": str(Path(tr.__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-c", RUN_CASES, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=3 * CPU_SECONDS, preexec_fn=limited, env=env, check=False)
    outcomes = {line["id"]: line for line in map(json.loads, done.stdout.splitlines())}
    outcomes["stderr"] = done.stderr[-3000:]
    return outcomes


@pytest.mark.parametrize("case_id", sorted(FILES))
def test_config_file_rejects(case_id, file_outcomes):
    case = FILES[case_id]
    outcome = file_outcomes.get(case_id)
    assert outcome is not None, f"the subprocess died before this case: {file_outcomes['stderr']}"
    assert outcome["error"] == case.error and outcome["tokenreduce"], outcome
    message = outcome["message"]
    assert len(message) < MESSAGE_LIMIT, message[:300]
    missing = [name for name in case.names if name not in message]
    assert not missing, f"message does not name {missing}: {message}"


def test_yaml_merge_keys_still_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {name: random, ratio: 0.5, seed: 3}\nreducer:\n  <<: *base\n  ratio: 0.25\n")
    assert tr.load_config(path)["reducer"] == {"name": "random", "ratio": 0.25, "seed": 3}


def test_python_alias_bomb_in_a_typed_field_is_reported_briefly():
    laughs: Any = ["lol"] * 10
    for _ in range(30):  # 10**31 strings once expanded; the object itself is tiny
        laughs = [laughs] * 10
    expect(lambda: tr.build("random", seed=laughs), tr.ConfigTypeError, ("random.seed", "list"))


# ----- plugin discovery ------------------------------------------------------------------------------
REDUCER_SOURCE = '''
import tokenreduce as tr

class Plugin(tr.Reducer):
    """A valid plugin strategy: keep everything."""

    def reduce(self, tokens):
        valid = tokens.flat_valid()
        return tr.Reduction(valid.clone(), grid=tokens.grid, valid=valid)
'''

ADAPTER_SOURCE = '''
from tokenreduce.adapters.base import ModelAdapter

class Raising(ModelAdapter):
    @classmethod
    def supports(cls, model):
        raise RuntimeError("supports() exploded")

class Greedy(ModelAdapter):
    @classmethod
    def supports(cls, model):
        return True
'''


def named_module(class_name: str) -> Any:
    """A module whose class carries a model's name (adapters match models by class name)."""
    return type(class_name, (torch.nn.Module,), {})()


@dataclass
class PluginCase:
    """Installed distributions (name, entry_points.txt, modules), what the user then does, and what
    must happen: the warnings name ``warns``; ``ask()`` raises ``error`` naming ``names``, or returns a
    value ``check`` accepts."""

    dists: list[tuple[str, str, dict[str, str]]]
    ask: Callable[[], Any]
    warns: tuple[str, ...] = ()
    error: type[BaseException] | None = None
    names: tuple[str, ...] = ()
    check: Callable[[Any], bool] = field(default=lambda result: True)


def _strategy(entry: str, module: str, source: str, dist: str = "odd-plugin") -> tuple[str, str, dict[str, str]]:
    return dist, f"[tokenreduce.strategies]\n{entry}\n", {module: source}


PLUGINS = {
    "import-calls-sys-exit": PluginCase(
        [_strategy("quitter = quitting_plugin:Plugin", "quitting_plugin", "import sys\nsys.exit(3)\n")],
        lambda: tr.build("quitter"), ("'quitter'", "odd-plugin", "SystemExit"), PluginError,
        ("'quitter'", "odd-plugin", "SystemExit")),
    "import-fails": PluginCase(
        [_strategy("broken = broken_plugin:Plugin", "broken_plugin", "raise ImportError('no backend')\n")],
        lambda: tr.build("broken"), ("'broken'", "ImportError", "no backend"), PluginError, ("'broken'", "no backend")),
    "not-a-reducer": PluginCase(
        [_strategy("plain = plain_plugin:Plain", "plain_plugin", "class Plain:\n    pass\n")],
        lambda: tr.build("plain"), ("'plain'", "plain_plugin:Plain", "Reducer"), PluginError,
        ("'plain'", "odd-plugin", "Reducer")),
    "not-a-class": PluginCase(
        [_strategy("maker = maker_plugin:make", "maker_plugin", "def make():\n    return None\n")],
        lambda: tr.build("maker"), ("'maker'", "not a class"), PluginError, ("'maker'", "not a class")),
    "wrong-kind-for-group": PluginCase(
        [("odd-plugin", "[tokenreduce.community]\nwrongkind = wrong_kind_plugin:Plugin\n",
          {"wrong_kind_plugin": REDUCER_SOURCE})],
        lambda: tr.build("st_simdiff", community="wrongkind"), ("'wrongkind'", "CommunityDetector"), PluginError,
        ("'wrongkind'", "community detector", "CommunityDetector")),
    "registers-a-builtin-name-on-import": PluginCase(
        [_strategy("sneaky = sneaky_plugin:Plugin", "sneaky_plugin",
                   REDUCER_SOURCE.replace("class Plugin", "@tr.register_strategy('random')\nclass Plugin"))],
        lambda: tr.build("sneaky"), ("'sneaky'", "DuplicateRegistrationError", "RandomSelect"), PluginError,
        ("'sneaky'", "random")),
    "shadows-a-builtin": PluginCase(
        [_strategy("random = shadow_plugin:Plugin", "shadow_plugin", REDUCER_SOURCE, dist="shadow-plugin")],
        lambda: tr.build("random", ratio=0.5), ("'random'", "shadow-plugin", "built-in", "RandomSelect"),
        check=lambda reducer: type(reducer).__module__ == "tokenreduce.strategies.random_select"),
    "two-distributions-one-name": PluginCase(
        [_strategy("twin = twin_a:Plugin", "twin_a", REDUCER_SOURCE, dist="dist-alpha"),
         _strategy("twin = twin_b:Plugin", "twin_b", REDUCER_SOURCE, dist="dist-beta")],
        lambda: tr.build("twin"), ("'twin'", "dist-alpha", "dist-beta"), tr.DuplicateRegistrationError,
        ("'twin'", "dist-alpha", "dist-beta")),
    "adapter-supports-raises": PluginCase(
        [("odd-plugin", "[tokenreduce.adapters]\naaa_raising = odd_adapters:Raising\nzzz_greedy = odd_adapters:Greedy\n",
          {"odd_adapters": ADAPTER_SOURCE})],
        lambda: (find_adapter(named_module("Qwen2VLForConditionalGeneration")),
                 find_adapter(named_module("SomeNewVLM"))),
        ("'aaa_raising'", "supports()", "exploded"),
        check=lambda found: found[0].__module__ == "tokenreduce.adapters.qwen_vl" and found[1].__name__ == "Greedy"),
    "adapter-claims-every-model": PluginCase(
        [("odd-plugin", "[tokenreduce.adapters]\naaa = odd_adapters:Greedy\n", {"odd_adapters": ADAPTER_SOURCE})],
        lambda: (find_adapter(named_module("Qwen2VLForConditionalGeneration")),
                 find_adapter(named_module("SomeNewVLM"))),
        check=lambda found: found[0].__module__ == "tokenreduce.adapters.qwen_vl" and found[1].__name__ == "Greedy"),
    "adapter-not-a-model-adapter": PluginCase(
        [("odd-plugin", "[tokenreduce.adapters]\nnotadapter = not_adapter_plugin:Plugin\n",
          {"not_adapter_plugin": REDUCER_SOURCE})],
        lambda: find_adapter(named_module("SomeNewVLM"), "notadapter"), ("'notadapter'", "ModelAdapter"),
        PluginError, ("'notadapter'", "ModelAdapter")),
}


@pytest.mark.parametrize("case_id", sorted(PLUGINS))
def test_plugin_is_contained_and_named(case_id, tmp_path, monkeypatch):
    case = PLUGINS[case_id]
    modules, entries = [], []
    for i, (dist, entry_points, sources) in enumerate(case.dists):
        root = tmp_path / str(i)
        root.mkdir()
        write_plugin(root, entry_points, sources, dist=dist)
        monkeypatch.syspath_prepend(str(root))
        modules += list(sources)
        entries += [line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line]
    forget_plugins([], [])  # rediscover with the new distributions
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if case.error is None:
                assert case.check(case.ask())
            else:
                expect(case.ask, case.error, case.names)
        messages = [str(w.message) for w in caught if issubclass(w.category, tr.PluginWarning)]
        library = str(Path(tr.__file__).parent)  # a warning points at the caller's line, not inside the library
        assert not [w.filename for w in caught if issubclass(w.category, tr.PluginWarning)
                    and w.filename.startswith(library)]
        for name in case.warns:
            assert any(name in m for m in messages), f"no PluginWarning names {name!r}: {messages}"
        assert case.warns or not messages, messages
    finally:
        forget_plugins(entries, modules)
