"""`fab app.logs`' pure parts: --since in the forms people type, the sources each kind of host
is asked for, each site's own nginx log files in every server block."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from djk.tasks import logs, nginx
from djk.tasks.engine.inventory import parse

EXAMPLE = Path(__file__).resolve().parents[2] / "example"
SITE = {
    "domains": ["shop.test", "www.shop.test"],
    "hosts": ["web1", "sup1"],
    "source": str(EXAMPLE),
    "port": 8005,
    "redirect_to": "shop.test",
    "asgi": "exampleproject.asgi:application",
    "settings": "exampleproject.settings",
}
NOW = datetime(2026, 11, 27, 14, 30, 0)


@pytest.fixture
def inventory(tmp_path):
    data = {
        "hosts": {
            "web1": {"address": "10.0.0.1"},
            "sup1": {"address": "10.0.0.2", "process_manager": "supervisor"},
        },
        "sites": {"shop": SITE},
    }
    return parse(data, tmp_path / "hosts.toml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-27 14:00", datetime(2026, 11, 27, 14, 0)),
        ("2026-11-27T13:15:30", datetime(2026, 11, 27, 13, 15, 30)),
        ("2026-11-26", datetime(2026, 11, 26)),
        ("14:00", datetime(2026, 11, 27, 14, 0)),
        ("today", datetime(2026, 11, 27)),
        ("yesterday", datetime(2026, 11, 26)),
        ("90m", datetime(2026, 11, 27, 13, 0)),
        ("2h", datetime(2026, 11, 27, 12, 30)),
        ("-2h", datetime(2026, 11, 27, 12, 30)),
        ("1 day ago", datetime(2026, 11, 26, 14, 30)),
        ("10 min ago", datetime(2026, 11, 27, 14, 20)),
        ("30s", datetime(2026, 11, 27, 14, 29, 30)),
    ],
)
def test_since_in_the_forms_people_type(text, expected):
    assert logs.since_epoch(text, NOW) == expected.timestamp()


def test_since_with_a_zone():
    assert logs.since_epoch("2026-11-27T14:00:00+00:00", NOW) == 1795788000.0


@pytest.mark.parametrize("text", ["soon", "2 fortnights", "27/11/2026", ""])
def test_since_that_is_not_a_time(text):
    with pytest.raises(ValueError, match="not a time"):
        logs.since_epoch(text, NOW)


def test_systemd_hosts_read_journald_supervisor_hosts_their_log_files(inventory):
    site = inventory.sites["shop"]
    on_systemd = logs.sources(site, inventory.hosts["web1"], ("web", "worker", "nginx"))
    assert on_systemd == [
        {"unit": "web", "journal": ["djk-shop-web-a.service", "djk-shop-web-b.service"]},
        {"unit": "worker", "journal": ["djk-shop-worker.service"]},
        {
            "unit": "nginx",
            "files": ["/var/log/nginx/djk-shop.access.log", "/var/log/nginx/djk-shop.error.log"],
        },
    ]
    on_supervisor = logs.sources(site, inventory.hosts["sup1"], ("web", "flower"))
    assert on_supervisor == [
        {
            "unit": "web",
            "files": [
                "/var/log/supervisor/djk-shop-web-a.log",
                "/var/log/supervisor/djk-shop-web-b.log",
            ],
        },
        {"unit": "flower", "files": ["/var/log/supervisor/djk-shop-flower.log"]},
    ]


def test_every_server_block_of_a_site_logs_to_its_own_files(inventory):
    (block, *_) = nginx.site_files(inventory, inventory.sites["shop"])
    text = block.content
    servers = text.count("server {")
    assert servers == 2  # the redirect from www and the site itself
    assert text.count("access_log /var/log/nginx/djk-shop.access.log;") == servers
    assert text.count("error_log /var/log/nginx/djk-shop.error.log;") == servers
