"""The settings layer (djk_settings.py beside it): its text, written into each release at its
root by the stage step, and what names it. Its digest is part of a build's tree: a kit whose
layer changed stages a new release."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODULE = "djk_settings"
FILE = f"{MODULE}.py"
TEXT = (Path(__file__).with_name(FILE)).read_text()
DIGEST = hashlib.sha256(TEXT.encode()).hexdigest()


def tree(source_tree: str) -> str:
    """A release's tree: the shipped source's and the layer's, in one hash."""
    return hashlib.sha1(f"{source_tree}\n{DIGEST}".encode()).hexdigest()
