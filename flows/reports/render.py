"""The report pages' Jinja2 environment: templates in flows/reports/templates/, autoescaping on.

Every ``{{ value }}`` is neutralised twice, whatever the template says: control characters become
visible ``\\xNN`` escapes (:func:`storage.reports.escape_controls`; a frame key may hold any byte)
and the result is HTML-escaped by autoescaping. ``None`` and NaN print as nothing (parquet rows
give either for a missing value). Only :class:`markupsafe.Markup` passes as is, and no view model
builds one from data.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from storage.reports import escape_controls


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return escape_controls(str(value))


@cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("flows.reports", "templates"),
        autoescape=True,  # every template, whatever its name: the pages are all HTML
        finalize=_finalize,
        undefined=StrictUndefined,  # a view model missing a field is a bug, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> bytes:
    """``template`` rendered with ``context``, UTF-8 encoded, ending with a newline."""
    return (environment().get_template(template).render(**context).rstrip("\n") + "\n").encode()
