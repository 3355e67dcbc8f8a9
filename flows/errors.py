"""Which failures are permanent (fix something, then rerun) and how to say so in one line.

Permanent errors are never retried — not by Prefect tasks, not by the daemons — and the CLI
prints them as one line (what, where, how to fix) with exit code 2. Everything else
(timeouts, throttling, 5xx, connection resets) is transient: retried with backoff.
"""

from __future__ import annotations

from storage.errors import (
    InvalidKeyError,
    InvalidURIError,
    OverlappingStoresError,
    StoreAccessError,
)
from storage.lease import LeaseHeldError

# Backend codes a retry cannot fix (S3 error codes and HTTP statuses as StoreAccessError.code).
MISSING_BUCKET = frozenset({"NoSuchBucket"})
BAD_CREDENTIALS = frozenset({"NoCredentials", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                             "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"})
DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})
PERMANENT_CODES = MISSING_BUCKET | BAD_CREDENTIALS | DENIED | {"InvalidBucketName", "PermanentRedirect",
                                                                "301"}


class UserError(Exception):
    """A problem the operator has to fix (one line: what, where, how to fix); exit code 2."""


def is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help (bad config, URI, missing bucket, credentials, access)."""
    if isinstance(exc, UserError | InvalidURIError | OverlappingStoresError | InvalidKeyError
                  | LeaseHeldError):
        return True
    from flows.config import ConfigError

    if isinstance(exc, ConfigError):
        return True
    if isinstance(exc, StoreAccessError):
        return exc.code in PERMANENT_CODES or exc.operation == "open"
    return False


def is_transient(exc: BaseException) -> bool:
    """Backend or network trouble that a later attempt may not meet (what Prefect tasks retry)."""
    return isinstance(exc, StoreAccessError | ConnectionError | TimeoutError) and not is_permanent(exc)


def describe(exc: BaseException) -> str | None:
    """One line for a permanent error (what, where, how to fix); None for anything else."""
    if not is_permanent(exc):
        return None
    text = " ".join(str(exc).split())
    if isinstance(exc, StoreAccessError):
        code = exc.code or ""
        if code in MISSING_BUCKET:
            return f"{text} — the bucket does not exist: create it or fix the s3:// URI"
        if code in BAD_CREDENTIALS:
            return (f"{text} — fix the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE or an instance role)")
        if code in DENIED:
            return f"{text} — the credentials lack permission: check the IAM policy of the bucket/prefix"
        if exc.operation == "open":
            return f"{text} — check the path (sources must exist; a destination folder is created)"
        return text
    if isinstance(exc, InvalidURIError):
        return f"{text} — use s3://bucket/prefix, file:///abs/dir or a folder path"
    if isinstance(exc, OverlappingStoresError):
        return f"{text} — put the destination outside the source"
    return text
