"""Config: typed sections, TOML recipes, --set overrides, errors that name the key."""
from dataclasses import dataclass

import pytest

from diffalign.config import SECTIONS, ConfigError, load_config, parse_override, register_section, to_toml
from diffalign.training.trainer import recipe_path, shipped_recipes


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config({"train": {"learning_rat": 1e-4}})
    assert "train.learning_rat" in str(err.value)
    assert "learning_rate" in str(err.value)  # the allowed keys are listed


def test_unknown_section_lists_known_sections():
    with pytest.raises(ConfigError, match=r"\[trian\].*known sections: .*train"):
        load_config({"trian": {"x": 1}})


@pytest.mark.parametrize(
    "data, key, expected",
    [
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "float"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size", "int"),
        ({"run": {"mixed_precision": "fp8"}}, "run.mixed_precision", "'bf16'"),
        ({"model": {"lora_targets": "to_q"}}, "model.lora_targets", "list of str"),
        ({"sampling": {"stochastic": "yes"}}, "sampling.stochastic", "bool"),
    ],
)
def test_wrong_type_names_key_and_type(data, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert key in str(err.value) and expected in str(err.value)


def test_set_overrides_are_coerced_to_field_types():
    config = load_config(None, [
        "train.learning_rate=1e-4", "train.batch_size=3", "sampling.stochastic=false", "model.source=shapes-flow",
        "model.lora_targets=to_q,to_k", "sampling.height=none", "awm.kl_beta=0", "reward.spec=a:0.5,b:0.5",
        "prompts.train_list=[\"a cat\", \"a dog\"]",
    ])
    assert config.train.learning_rate == 1e-4 and isinstance(config.train.learning_rate, float)
    assert config.train.batch_size == 3
    assert config.sampling.stochastic is False
    assert config.model.source == "shapes-flow"
    assert config.model.lora_targets == ["to_q", "to_k"]
    assert config.sampling.height is None
    assert config.awm.kl_beta == 0.0 and isinstance(config.awm.kl_beta, float)
    assert config.reward.spec == "a:0.5,b:0.5"
    assert config.prompts.train_list == ["a cat", "a dog"]


def test_override_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.learning_rate")
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("learning_rate=1")
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(None, ["train.batch_size=many"])


def test_section_validation_names_key():
    with pytest.raises(ConfigError, match="train.batch_size must be positive"):
        load_config({"train": {"batch_size": 0}})
    from diffalign.training.algorithms import AWM, DDPO

    with pytest.raises(ConfigError, match="awm.train_timesteps"):
        AWM(load_config({"awm": {"train_timesteps": 0}}))
    with pytest.raises(ConfigError, match="sampling.stochastic"):
        DDPO(load_config({"sampling": {"stochastic": False}}))


def test_new_trainer_sections_register_without_touching_the_loader():
    @register_section("toytrainer")
    @dataclass
    class ToyConfig:
        beta: float = 0.5
        mode: str = "a"

    try:
        config = load_config({"toytrainer": {"beta": 2}}, ["toytrainer.mode=b"])
        assert config.toytrainer.beta == 2.0 and config.toytrainer.mode == "b"
        with pytest.raises(ConfigError, match="toytrainer.gamma"):
            load_config({"toytrainer": {"gamma": 1}})
    finally:
        SECTIONS.pop("toytrainer")


def test_toml_round_trip(tmp_path):
    config = load_config(None, ["run.algorithm=awm", "prompts.train_list=x,y", "reward.options={mode = \"binary\"}"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    again = load_config(path)
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipes_parse_and_validate(name):
    from diffalign.training.algorithms import ALGORITHMS

    config = load_config(recipe_path(name))
    assert config.run.algorithm in ALGORITHMS
    ALGORITHMS.get(config.run.algorithm)(config)  # cross-section checks
    assert recipe_path(name) == recipe_path(f"{name}.toml")


def test_recipes_are_findable_by_bare_name_and_expected_set_ships():
    assert {"ddpo_shapes", "flow_grpo_shapes", "awm_shapes", "ddpo_sd15_compressibility", "ddpo_sd15_aesthetic",
            "flow_grpo_sd35m_geneval", "flow_grpo_fast_sd35m_geneval", "awm_sd35m_geneval"} <= set(shipped_recipes())
    with pytest.raises(ConfigError, match="shipped"):
        recipe_path("no_such_recipe")


def test_official_defaults_pinned():
    grpo = load_config(recipe_path("flow_grpo_sd35m_geneval"))
    assert grpo.flow_grpo.kl_beta == 0.04 and grpo.flow_grpo.clip_range == 1e-4 and grpo.sampling.noise_level == 0.7
    awm = load_config(recipe_path("awm_sd35m_geneval"))
    assert awm.awm.kl_beta == 0.001 and awm.awm.train_timesteps == 6 and awm.awm.weighting == "ghuber"
    ddpo = load_config(recipe_path("ddpo_sd15_compressibility"))
    assert ddpo.ddpo.clip_range == 1e-4 and ddpo.sampling.eta == 1.0 and ddpo.train.learning_rate == 3e-4
    fast = load_config(recipe_path("flow_grpo_fast_sd35m_geneval"))
    assert (fast.sampling.sde_window, fast.sampling.window_range(), fast.sampling.noise_level) == (3, (0, 5), 0.8)
    assert fast.flow_grpo.clip_range == 1e-5 and fast.flow_grpo.kl_beta == 0 and fast.sampling.guidance_scale == 1.0


def test_cli_reports_bad_key(capsys):
    from diffalign.cli import main

    assert main(["train", "awm_shapes", "--set", "awm.bogus=1"]) == 2
    assert "awm.bogus" in capsys.readouterr().err
