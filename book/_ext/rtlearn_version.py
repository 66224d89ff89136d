"""Sphinx extension (listed in _config.yml, sphinx.local_extensions): the book shows the package version.

The version is written once, in pyproject.toml; ``rtlearn.__version__`` reads it, and this sets
Sphinx's ``version``/``release`` and the footer under every page from it, so the book never
states a version of its own.
"""
from __future__ import annotations


def footer(version: str) -> str:
    return f"rtlearn {version}"


def _set_version(app, config) -> None:
    import rtlearn

    version = rtlearn.__version__
    config.version = config.release = version
    config.html_theme_options = {**(config.html_theme_options or {}), "extra_footer": footer(version)}


def setup(app):
    app.connect("config-inited", _set_version)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
