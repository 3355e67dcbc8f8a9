"""Optional webhook on a failed run or a run over the quarantine threshold.

The URL comes from an environment variable (``alerts.webhook_env``, default
``CHECKOUT_RESTORE_WEBHOOK_URL``) because it usually carries a token: it never appears in a
config file, a report or a log line. The POST body is a small JSON object (Slack/Teams/
Mattermost incoming webhooks show its ``text``); delivery is best effort, one attempt with a
10 s timeout, and a failure is logged by class and HTTP status only.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from flows.reports.values import quality_gate_text

log = logging.getLogger("checkout_restore.notify")

TIMEOUT_S = 10.0
ALERT_STATUSES = ("failed", "failed_quality")


def alert_text(summary: Mapping[str, Any]) -> str:
    status = summary.get("status")
    head = f"checkout-restore run {summary.get('run_id')} {status}"
    if status == "failed":
        err = summary.get("error") or {}
        return f"{head}: {err.get('type')}: {err.get('message')}"
    return f"{head}: {quality_gate_text(summary)}; report {summary.get('report_uri')}"


def notify(summary: Mapping[str, Any], env_var: str, logger: logging.Logger | logging.LoggerAdapter = log
           ) -> bool | None:
    """POST an alert for a ``failed`` / ``failed_quality`` summary when ``$env_var`` is set.
    Returns None when nothing was due or configured, else whether delivery succeeded."""
    url = os.environ.get(env_var, "").strip()
    if summary.get("status") not in ALERT_STATUSES or not url:
        return None
    keys = ("run_id", "status", "error", "counts", "quarantine_rate", "report_uri", "source", "dest")
    body = {"text": alert_text(summary), **{k: summary.get(k) for k in keys}}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "checkout-restore"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            logger.info("webhook ($%s): alert for run %s delivered (HTTP %s)", env_var, summary.get("run_id"),
                        resp.status)
            return True
    except urllib.error.HTTPError as exc:
        why = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = type(exc).__name__  # the reason text could echo the host or path: keep it out
    logger.warning("webhook ($%s): alert for run %s not delivered (%s)", env_var, summary.get("run_id"), why)
    return False
