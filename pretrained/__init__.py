"""The models shipped with worldsim (``NAME.pt``, weights only); see :mod:`worldsim.pretrained`."""
