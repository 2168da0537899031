"""Debian bookworm testbed: real systemd + sshd hosts under systemd-nspawn.

Each host runs on its own overlayfs over a cached debootstrap image, in its
own network namespace on bridge ``djkbr<subnet>`` (10.213.<subnet>.0/24),
and is reached from this machine over real SSH as ``deploy``.
"""

from ._sys import TestbedError
from .core import KEY_PATH, Testbed, TestHost, ensure_deps, ensure_key
from .image import ensure_image, image_dir, recipe_hash

__all__ = [
    "KEY_PATH",
    "TestHost",
    "Testbed",
    "TestbedError",
    "ensure_deps",
    "ensure_image",
    "ensure_key",
    "image_dir",
    "recipe_hash",
]
