"""What each finished stage recorded (kept in the manifest, restored on --resume)."""
from __future__ import annotations


class Records(dict):
    """stage name -> the data it recorded."""
