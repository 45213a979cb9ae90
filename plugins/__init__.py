"""worldsim's first-party plugins (import name ``worldsim_plugins``): ordinary pluggy plugins that use only
worldsim's public API, as a third party's would. worldsim registers the modules of ``MODULES`` directly (under their
module names), before any entry point."""

MODULES = (
    "worldsim_plugins.gru",
    "worldsim_plugins.convgru",
    "worldsim_plugins.state",
    "worldsim_plugins.pixels",
    "worldsim_plugins.video_vae",
    "worldsim_plugins.dit",
    "worldsim_plugins.unet3d",
    "worldsim_plugins.guidance",
    "worldsim_plugins.maze2d",
    "worldsim_plugins.maze2d_data",
    "worldsim_plugins.maze_pixels",
    "worldsim_plugins.shapes",
    "worldsim_plugins.atari",
    "worldsim_plugins.reacher",
)
