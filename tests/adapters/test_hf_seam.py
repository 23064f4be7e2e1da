"""The transformers seam: one module names transformers' internals, for the declared, tested range."""

from __future__ import annotations

import ast
import pathlib

import pytest
import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tokenreduce.adapters import hf

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tokenreduce"
SEAM = PACKAGE / "adapters" / "hf.py"


def _transformers_requirements():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, requirements in extras.items():
        for requirement in requirements:
            if requirement.startswith("transformers"):
                yield name, requirement[len("transformers"):]


def test_every_extra_declares_the_tested_range():
    found = dict(_transformers_requirements())
    assert {"hf", "test", "bench", "eval"} <= set(found)
    assert all(SpecifierSet(spec) == SpecifierSet(hf.TESTED_RANGE) for spec in found.values()), found


def test_installed_transformers_is_inside_the_tested_range():
    import transformers

    assert Version(transformers.__version__) in SpecifierSet(hf.TESTED_RANGE)


def _transformers_imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers."):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("transformers.")]
    return found


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p != SEAM),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_but_the_seam_names_a_transformers_internal(path):
    """Submodules of transformers, its cache argument names and private attributes appear in hf.py only
    (the package's public top level — ``transformers.AutoProcessor`` — is fine anywhere)."""
    text = path.read_text()
    assert _transformers_imports(path) == []
    for name in ("past_key_values", "mm_encoder_outputs", "_attn_implementation", "_deepstack_process",
                 "masking_utils", "pooler_output", "get_seq_length"):
        assert name not in text, f"{path.name} names {name!r}; go through tokenreduce.adapters.hf"


class _Output:
    def __init__(self, **fields):
        self.__dict__.update(fields)


@pytest.mark.parametrize("name", hf.CACHE_ARGUMENTS)
def test_the_cache_is_found_under_either_name(name):
    cache = object()
    assert hf.cache_argument({name: cache}) is cache
    assert hf.output_cache(_Output(**{name: cache})) is cache
    assert hf.cache_argument({"input_ids": 1}) is None
    assert hf.output_cache(_Output(logits=1)) is None
