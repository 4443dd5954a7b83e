"""Alias of :mod:`traffic_moe_hf.shaping.attacks` (and of the prepared-dataset readers it used to hold)."""

from ..data.prepared import dataset_level, dataset_options  # noqa: F401
from ..shaping.attacks import *  # noqa: F401,F403
from ..shaping.attacks import (  # noqa: F401
    ACK, FIN, PSH, RST, SYN, TCP, UDP, _checksum, attack_columns, attacked_dataset,
)
