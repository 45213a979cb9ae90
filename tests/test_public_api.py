"""The public names DESIGN.md promises to plugins, tests and users."""


def test_public_api_names():
    import worldsim
    from worldsim.diffusion import scheduling_matrix
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry
    from worldsim.testing import check_backbone, check_objective, check_tokenizer

    assert callable(worldsim.hookimpl)
    registry = build_registry(get_plugin_manager())
    assert "gru" in registry.backbones and "state" in registry.tokenizers and isinstance(registry.guidance, dict)
    assert scheduling_matrix("pyramid", 3, 4).shape == (4 + 2 + 1, 3)
    assert all(callable(f) for f in (check_backbone, check_tokenizer, check_objective))
