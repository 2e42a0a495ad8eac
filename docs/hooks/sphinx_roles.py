"""MkDocs hook: the Sphinx roles in driftloop's docstrings become cross-references.

The docstrings name other objects the Sphinx way (:func:`load_settings`,
:class:`~driftloop.serving.auth.MissingApiToken`); mkdocstrings renders the role as text before a
code span. This turns each into a code span that links to the object's API entry when the name is
fully qualified and rendered somewhere in the site (an optional mkdocs-autorefs reference: an
unknown or relative name stays plain code, with no warning), and shows ``~a.b.c`` as ``c`` as
Sphinx does.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:func|class|meth|attr|mod|data|exc|obj):<code>(?P<tilde>~?)(?P<name>[\w.]+)(?P<call>\(\))?</code>"
)


def _reference(match: re.Match[str]) -> str:
    name = match["name"]
    shown = name.rsplit(".", 1)[-1] if match["tilde"] else name
    shown += match["call"] or ""
    return f'<autoref identifier="{name}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub(_reference, html)
