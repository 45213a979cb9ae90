"""Data: what every data set returns, and the file formats worldsim reads and writes.

- :mod:`worldsim.data.sources`: data sets by name (the ``worldsim_add_datasets`` hook), ``oscillators`` and ``npz``
- :mod:`worldsim.data.sequence`: :class:`SequenceData`, the episodes a data set returns
- :mod:`worldsim.data.d4rl`: the D4RL hdf5 layout; :mod:`worldsim.data.minari`: Minari's
- :mod:`worldsim.data.windows`, :mod:`worldsim.data.normalizers`, :mod:`worldsim.data.token_cache`: what training
  makes of the episodes

The names below are the public API a data-set plugin builds on (``worldsim_plugins.maze2d_data`` uses only these).
"""

from worldsim.data.d4rl import read_d4rl_attrs, read_d4rl_hdf5, write_d4rl_hdf5
from worldsim.data.sequence import SequenceData
from worldsim.runtime import check_fits

__all__ = ["SequenceData", "check_fits", "read_d4rl_attrs", "read_d4rl_hdf5", "write_d4rl_hdf5"]
