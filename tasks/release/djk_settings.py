"""Django settings of a site deployed by djk (the deploy kit), written by the kit into each
release: the project's own production settings (the module DJK_SETTINGS names, from the site's
`settings` in hosts.toml) with what hosts.toml manages set over them. DJANGO_SETTINGS_MODULE
names this module in the site's env file; `fab app.settings` lists what it sets.

Set here: SECRET_KEY (DJANGO_SECRET_KEY of the secrets, when given), DEBUG off, ALLOWED_HOSTS,
CSRF_TRUSTED_ORIGINS, STATIC_ROOT and STATIC_URL, the proxy's TLS header (and secure cookies on
TLS sites), MEDIA_ROOT and MEDIA_URL with [media], the database when [database] names a
server (engine "postgresql" or "external"; and django.contrib.postgres in INSTALLED_APPS for
PostgreSQL), Celery's broker and result backend, and unhandled request errors logged to the
process's output when the project logs nowhere. With SQLite (the default) the project's
DATABASES stand, but a SQLite file inside the release directory (as startproject writes it)
moves to the site's shared directory, which outlives releases.

This file is the kit's: the kit replaces it in every release it stages.
"""

import importlib
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

_env = os.environ
_project = importlib.import_module(_env["DJK_SETTINGS"])
globals().update((k, v) for k, v in vars(_project).items() if k.isupper())

_RELEASE = Path(__file__).resolve().parent
DJK_LAYER: list[str] = []  # what this module set over the project's settings, in order


def _set(name, value):
    globals()[name] = value
    DJK_LAYER.append(name)


def _inside_release(name):
    if str(name).startswith((":memory:", "file:")):  # not a path (SQLite's URI forms)
        return False
    try:
        return Path(name).resolve().is_relative_to(_RELEASE)
    except (TypeError, ValueError):
        return False


if "DJANGO_SECRET_KEY" in _env:
    _set("SECRET_KEY", _env["DJANGO_SECRET_KEY"])
_set("DEBUG", False)
_set("ALLOWED_HOSTS", _env["DJANGO_ALLOWED_HOSTS"].split(","))
_set("CSRF_TRUSTED_ORIGINS", _env["DJANGO_CSRF_TRUSTED_ORIGINS"].split(","))
_set("STATIC_ROOT", _env["DJANGO_STATIC_ROOT"])
_set("STATIC_URL", "/static/")  # where nginx serves them
# nginx sets X-Forwarded-Proto; nothing but nginx and the kit's forwarder reach gunicorn.
_set("SECURE_PROXY_SSL_HEADER", ("HTTP_X_FORWARDED_PROTO", "https"))
if _env.get("DJK_TLS") == "1":
    _set("SESSION_COOKIE_SECURE", True)
    _set("CSRF_COOKIE_SECURE", True)
if "DJANGO_MEDIA_ROOT" in _env:
    _set("MEDIA_ROOT", _env["DJANGO_MEDIA_ROOT"])
    _set("MEDIA_URL", _env["DJANGO_MEDIA_URL"])

_databases = {alias: dict(conf) for alias, conf in globals().get("DATABASES", {}).items()}
_engine = _env.get("DJK_DATABASE", "")
if _engine == "postgresql":
    _databases["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _env["DATABASE_NAME"],
        "USER": _env["DATABASE_USER"],
        "PASSWORD": _env["DATABASE_PASSWORD"],
        "HOST": _env["DATABASE_HOST"],
        "PORT": _env["DATABASE_PORT"],
    }
elif _engine == "external":
    _url = urlsplit(_env["DATABASE_URL"])
    _backend = {"postgres": "postgresql", "postgresql": "postgresql", "mysql": "mysql"}
    _databases["default"] = {
        "ENGINE": f"django.db.backends.{_backend[_url.scheme]}",
        "NAME": unquote(_url.path.lstrip("/")),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
    }
for _conf in _databases.values():
    if _conf.get("ENGINE", "").endswith("sqlite3") and _inside_release(_conf.get("NAME")):
        # The next release would not have it: the file lives in the shared directory.
        _relative = Path(_conf["NAME"]).resolve().relative_to(_RELEASE)
        _conf["NAME"] = str(Path(_env["DJK_SHARED"]) / _relative)
if _databases != globals().get("DATABASES"):
    _set("DATABASES", _databases)
if any(c.get("ENGINE", "").endswith("postgresql") for c in _databases.values()):
    _apps = list(globals().get("INSTALLED_APPS", []))
    if "django.contrib.postgres" not in _apps:
        # Wagtail's search and others check for it on PostgreSQL (postgres.E005).
        _set("INSTALLED_APPS", [*_apps, "django.contrib.postgres"])

if "CELERY_BROKER_URL" in _env:
    _set("CELERY_BROKER_URL", _env["CELERY_BROKER_URL"])
    _set("CELERY_RESULT_BACKEND", _env["CELERY_RESULT_BACKEND"])

if not globals().get("LOGGING"):
    # With DEBUG off Django logs a request's unhandled error only by mail to ADMINS.
    _set(
        "LOGGING",
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"djk_stderr": {"class": "logging.StreamHandler"}},
            "loggers": {
                "django.request": {"handlers": ["djk_stderr"], "level": "ERROR"},
            },
        },
    )
