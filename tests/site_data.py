"""The smallest inventory with one site on one host, as data, for tests that change a key of
it (the example project as its source, a secrets file beside hosts.toml)."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "example"


def one_site(tmp_path: Path, **site: object) -> dict:
    """hosts.toml's data for site `shop` on host `web1`; `site` adds or replaces its keys."""
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=k-123456\n")
    return {
        "hosts": {"web1": {"address": "10.213.0.11"}},
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": ["web1"],
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "port": 8001,
                "env_file": "site.env",
                **site,
            }
        },
    }
