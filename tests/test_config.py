"""Configs: every way to build, round-trips through dicts and files, and clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import tokenreduce as tr
from tokenreduce.graph.community import CommunityDetector


@pytest.fixture
def dummy_community():
    """A community detector registered for the duration of a test (nested-config target)."""

    @tr.register_community("test_singletons")
    class Singletons(CommunityDetector):
        """Every node its own community."""

        @dataclasses.dataclass
        class Config(tr.Config):
            resolution: float = 1.0
            seed: int = 0

        def detect(self, graph, edge_mask=None):
            raise NotImplementedError

    @tr.register_strategy("test_with_community")
    class WithCommunity(tr.BudgetedReducer):
        """A strategy with a nested community component."""

        @dataclasses.dataclass
        class Config(tr.BudgetConfig):
            community: tr.Config = tr.config.component_field("community", "test_singletons")

        def reduce(self, tokens):
            raise NotImplementedError

    yield Singletons
    tr.COMMUNITY.unregister("test_singletons")
    tr.STRATEGIES.unregister("test_with_community")


def test_build_forms_agree():
    by_name = tr.build("random", ratio=0.3, seed=4)
    by_dict = tr.build({"name": "random", "ratio": 0.3, "seed": 4})
    by_config = tr.build(by_name.config)
    by_reducer = tr.build(by_name)
    assert by_name.config == by_dict.config == by_config.config
    assert by_reducer is by_name
    assert tr.build(by_name.config, seed=5).config.seed == 5
    assert tr.build({"name": "random", "ratio": 0.3}, seed=9).config.seed == 9


def test_acceptance_example_keeps_exact_ceil():
    x = torch.randn(3, 4, 6, 5, 8)
    red = tr.build({"name": "random", "ratio": 0.3, "seed": 0})(tr.VisualTokens(x))
    assert red.kept_counts().tolist() == [36, 36, 36]  # ceil(0.3 * 120)


def test_to_dict_round_trips_for_every_strategy():
    for name in tr.list_strategies():
        config = tr.build(name).config
        data = config.to_dict()
        assert data["name"] == name
        json.dumps(data)  # plain JSON types only
        assert tr.build(data).config == config


def test_nested_component_configs(dummy_community):
    default = tr.build("test_with_community")
    assert default.config.community.name == "test_singletons"
    built = tr.build({"name": "test_with_community", "ratio": 0.2,
                      "community": {"name": "test_singletons", "resolution": 0.5}})
    assert built.config.community.resolution == 0.5
    data = built.config.to_dict()
    assert data["community"] == {"name": "test_singletons", "resolution": 0.5, "seed": 0}
    assert tr.build(data).config == built.config
    assert tr.build("test_with_community", community="test_singletons").config.community.resolution == 1.0
    with pytest.raises(tr.UnknownNameError, match="community detector 'louvian'"):
        tr.build("test_with_community", community={"name": "louvian"})
    with pytest.raises(tr.ConfigError, match=r"unknown key\(s\) 'resolutoin'.*valid keys: resolution, seed"):
        tr.build("test_with_community", community={"name": "test_singletons", "resolutoin": 2})
    with pytest.raises(tr.ConfigError, match="needs a 'name' key"):
        tr.build("test_with_community", community={"resolution": 2.0})
    with pytest.raises(tr.ConfigTypeError, match="must be a community detector, got a strategy"):
        tr.build("test_with_community", community=tr.build("random").config)


def test_unknown_keys_list_valid_ones():
    with pytest.raises(tr.ConfigError) as info:
        tr.build("random", ratoi=0.3)
    assert "'ratoi'" in str(info.value) and "valid keys: ratio, count, seed" in str(info.value)
    with pytest.raises(tr.ConfigError, match="unknown key"):
        tr.build({"name": "uniform", "ratio": 0.3, "frames": 2})


@pytest.mark.parametrize("kwargs, words", [
    ({"ratio": "0.3"}, "random.ratio must be"),
    ({"seed": 1.5}, "random.seed must be an int"),
    ({"seed": True}, "random.seed must be an int"),
    ({"ratio": 0.3, "count": 3}, "give one budget: ratio or count, not several"),
    ({"ratio": 1.2}, "ratio must be in (0, 1]"),
    ({"count": 0}, "count must be >= 1"),
])
def test_wrong_values_name_the_field(kwargs, words):
    with pytest.raises((tr.ConfigError, tr.ConfigTypeError)) as info:
        tr.build("random", **kwargs)
    assert words in str(info.value)


def test_bool_field_rejects_ints():
    with pytest.raises(tr.ConfigTypeError, match="uniform.per_frame must be a bool"):
        tr.build("uniform", per_frame=1)


def test_int_is_accepted_for_float_fields():
    assert tr.build("random", ratio=1).config.ratio == 1.0


def test_name_mismatch_and_bad_spec_types():
    with pytest.raises(tr.ConfigError, match="was given name"):
        tr.STRATEGIES.get("random").Config.from_dict({"name": "uniform"})
    with pytest.raises(tr.ConfigTypeError, match="cannot build a strategy from int"):
        tr.build(3)


def test_json_and_yaml_files(tmp_path):
    reducer = tr.build("uniform", ratio=0.25, per_frame=True)
    for suffix in (".json", ".yaml", ".yml"):
        path = tmp_path / f"config{suffix}"
        tr.save_config(reducer.config, path)
        assert tr.build(path).config == reducer.config
        assert tr.build(str(path)).config == reducer.config
        assert tr.load_config(path) == reducer.config.to_dict()


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(tr.ConfigError, match="invalid YAML"):
        tr.build(path)


def test_file_errors(tmp_path):
    with pytest.raises(tr.ConfigError, match="does not exist"):
        tr.build(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(tr.ConfigError, match="invalid JSON"):
        tr.build(bad)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(tr.ConfigError, match="must hold a mapping"):
        tr.build(listing)
    other = tmp_path / "config.toml"
    other.write_text("")
    with pytest.raises(tr.ConfigError, match="unsupported config file type"):
        tr.load_config(other)


def test_component_constructor_forms():
    cls = tr.STRATEGIES.get("random")
    assert cls(ratio=0.2).config.ratio == 0.2
    assert cls(cls.Config(ratio=0.2), seed=3).config.seed == 3
    with pytest.raises(tr.ConfigTypeError, match="needs a"):
        cls(tr.STRATEGIES.get("uniform").Config())


def test_inherited_config_is_bound_per_class():
    @tr.register_strategy("test_random_child")
    class Child(tr.STRATEGIES.get("random")):
        """A subclass that inherits its parent's config."""

    try:
        assert Child.Config is not tr.STRATEGIES.get("random").Config
        assert tr.build("test_random_child", seed=2).config.to_dict()["name"] == "test_random_child"
        assert tr.build("random").config.name == "random"
    finally:
        tr.STRATEGIES.unregister("test_random_child")
