"""Config composition: experiments, component selection by registry name, clear errors."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import worldsim
from worldsim.config import apply_overrides, available, compose_config
from worldsim.errors import ConfigError
from worldsim.runs import RunFolder


def test_base_config_composes_with_defaults():
    cfg = compose_config([])
    assert cfg.backbone.name == "gru"
    assert cfg.tokenizer.name == "state"
    assert cfg.dataset.name == "oscillators"
    assert str(RunFolder.of(cfg).root) == "runs/default"


def test_experiment_and_overrides_apply():
    cfg = compose_config(["experiment=toy", "trainer.steps=7", "backbone.hidden=32", "run.dir=/tmp/x"])
    assert cfg.run.name == "toy"
    assert cfg.trainer.steps == 7
    assert cfg.backbone.hidden == 32
    assert str(RunFolder.of(cfg).root) == "/tmp/x"


def _on_vae_latents(name: str) -> bool:
    """Whether an experiment (or one it extends) trains a world model on a VAE run's latents."""
    text = (Path(__file__).parents[1] / "configs" / "experiment" / f"{name}.yaml").read_text()
    if "tokenizer: video_vae" in text:
        return True
    extended = re.findall(r"^  - (\w+)$", text, flags=re.MULTILINE)
    return any(_on_vae_latents(e) for e in extended if e in available("experiment"))


@pytest.mark.parametrize("name", available("experiment"))
def test_every_shipped_experiment_composes_and_validates(name):
    # compose_config validates; a latent world model's VAE run is checked too, so none is named here.
    no_vae = ["tokenizer.checkpoint=null"] if _on_vae_latents(name) else []
    assert compose_config([f"experiment={name}", *no_vae]).run.name == name


def test_the_32x32_latent_experiments_extend_the_64x64_ones():
    vae = compose_config(["experiment=vae_maze_pixels32"])
    assert (vae.dataset.resolution, vae.vae.spatial_factor, list(vae.vae.channels)) == (32, 4, [32, 64])
    assert vae.trainer.objective == "vae" and vae.vae.latent_channels == 4  # the rest is vae_maze_pixels'
    wm = compose_config(["experiment=video_maze_latent32", "tokenizer.checkpoint=null"])
    assert wm.dataset.path == "data/video-maze-pixels-32.h5" and wm.dataset.resolution == 32
    assert (wm.backbone.name, wm.diffusion.prediction, wm.data.seq_len) == ("convgru", "v", 16)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["backbone=gur"], "unknown backbone 'gur'; did you mean 'gru'?"),
        (["experiment=tyo"], "unknown experiment 'tyo'; did you mean 'toy'?"),
        (["trainer.steps"], "malformed override 'trainer.steps'"),
        (["trainer.steps=[1,"], "malformed override"),
        (["~backbone.nokey"], "Could not delete from config. 'backbone.nokey' does not exist"),
        (["backbone.hiden=3"], "backbone.hiden: backbone 'gru' has no argument 'hiden' (did you mean 'hidden'?)"),
        (["backbone=dit", "backbone.widht=3"], "backbone 'dit' has no argument 'widht' (did you mean 'width'?)"),
        (["diffusion.prediction=score"], "diffusion.prediction: got 'score'; expected one of eps, v, x0"),
        (["trainer.steps=0"], "trainer.steps: got 0; expected a positive integer"),
        (["sampling.schedule=zigzag"], "sampling.schedule: got 'zigzag'"),
    ],
)
def test_bad_config_gives_one_line_error(overrides, expected):
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_an_experiment_takes_another_backbone_with_its_arguments_deleted():
    """`~key` (Hydra's deletion) drops an experiment's arguments of the backbone it replaces."""
    cfg = compose_config(
        [
            "experiment=maze2d_large_jumpy_cpu",
            "backbone=dit",
            "~backbone.hidden",
            "~backbone.embed",
            "backbone.width=64",
        ]
    )
    assert cfg.backbone.name == "dit" and cfg.backbone.width == 64 and "hidden" not in cfg.backbone


def test_third_party_component_without_yaml_gets_factory_defaults():
    """A registered backbone that ships no YAML is selectable by name; its defaults form the node."""
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    class ThirdParty:
        @worldsim.hookimpl
        def worldsim_add_backbones(self):
            def build_tiny(token_shape, cond_dim, max_tokens, width=16, act="gelu"):
                raise AssertionError("not built in this test")

            return {"tiny_thirdparty": build_tiny}

    pm = get_plugin_manager(autoload=False)
    pm.register(ThirdParty(), name="thirdparty-example")
    registry = build_registry(pm)
    cfg = compose_config(["backbone=tiny_thirdparty", "backbone.width=8"], registry)
    assert dict(cfg.backbone) == {"name": "tiny_thirdparty", "width": 8, "act": "gelu"}


def test_component_defaults_have_one_home_the_factory_signature():
    """No component argument has a second default in configs/: the composed node of every registered
    backbone, tokenizer and guidance objective is exactly its factory's defaults."""
    from worldsim.config import COMPONENT_GROUPS, compose_config, config_dir
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager(autoload=False))
    for group in COMPONENT_GROUPS:
        assert not (config_dir() / group).exists(), f"configs/{group}/ would be a second home for defaults"
        for name in registry.names(group):
            cfg = compose_config([f"{group}={name}"], registry)
            node = {k: v for k, v in OmegaConf.to_container(cfg[group]).items() if k != "name"}
            defaults = {
                k: list(v) if isinstance(v, tuple) else v for k, v in registry.factory_defaults(group, name).items()
            }
            assert node == defaults, (group, name)


def test_rollout_overrides_limited_to_sampling():
    cfg = compose_config([])
    new = apply_overrides(cfg, ["sampling.steps=7"], allowed=("sampling",))
    assert new.sampling.steps == 7 and cfg.sampling.steps == 50
    with pytest.raises(ConfigError, match="only sampling"):
        apply_overrides(cfg, ["backbone.hidden=3"], allowed=("sampling",))
    with pytest.raises(ConfigError, match="no such key"):
        apply_overrides(cfg, ["sampling.stepz=3"], allowed=("sampling",))


def test_configure_hook_sees_the_composed_config_and_can_reject_it():
    """worldsim_configure reaches the plugins of the registry in use; their ConfigError is one line."""
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    seen = []

    class Validating:
        @worldsim.hookimpl
        def worldsim_configure(self, config):
            seen.append(config.trainer.steps)
            if config.trainer.steps == 13:
                raise ConfigError("trainer.steps: 13 is unlucky for this plugin")

    pm = get_plugin_manager(autoload=False, fresh=True)
    pm.register(Validating(), name="validating")
    registry = build_registry(pm)
    compose_config(["trainer.steps=12"], registry)
    assert seen == [12]
    with pytest.raises(ConfigError, match="unlucky"):
        compose_config(["trainer.steps=13"], registry)


def test_base_config_trains_the_level_it_shows_the_context_at():
    """Sampling shows finished tokens at sampling.stabilization_level; training draws levels 1..K, plus
    k = 0 for a clean context (diffusion.clean_context_prob) or a clean first token. The base config must
    train the level it samples at, or every user of it conditions on inputs the model never saw."""
    cfg = compose_config([])
    k_s = cfg.sampling.stabilization_level
    trained_at_zero = cfg.diffusion.clean_context_prob > 0 or cfg.diffusion.clean_first_prob > 0
    assert k_s > 0 or trained_at_zero
