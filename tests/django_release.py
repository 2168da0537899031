"""A release of a generated Django project as the kit's stage step leaves it, for unit tests
that run a real Django (the test venv's): the env the kit writes for it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from djk.tasks.release import layer


def env(release: Path, **more: str) -> dict[str, str]:
    """The env file's variables for a release at <base>/releases/R1 (shared: <base>/shared)."""
    base = release.parent.parent
    return {
        "PATH": os.environ["PATH"],
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": layer.MODULE,
        "DJK_SETTINGS": "mysite.settings",
        "DJK_SHARED": str(base / "shared"),
        "DJANGO_SECRET_KEY": "k-" + "x" * 50,
        "DJANGO_ALLOWED_HOSTS": "shop.test,.shop.test",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://shop.test,http://shop.test",
        "DJANGO_STATIC_ROOT": str(base / "static" / "R1"),
        **more,
    }


def staged(project: Path, base: Path) -> Path:
    """The project as the stage step leaves a release of it: <base>/releases/R1 with the
    layer at its root, and <base>/shared."""
    found = base / "releases" / "R1"
    shutil.copytree(project, found)
    (found / layer.FILE).write_text(layer.TEXT)
    (base / "shared").mkdir()
    return found
