"""Verifying a webhook as LiveKit signs it: the JWT's key pair, signature, lifetime and body hash."""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import time
import warnings
from collections.abc import Iterable
from typing import Any

import jwt
import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from jwt.algorithms import HMACAlgorithm
from livekit.api import TokenVerifier

from ..config import WEBHOOK_CLOCK_LEEWAY, WEBHOOK_TOKEN_TTL, KeyPair

# reason -> (HTTP status, when). A refusal is a 4xx, which LiveKit never retries; rate_limited alone is
# a 503, so that LiveKit retries it (with backoff) rather than drop the event. The README and
# docs/metrics.md list these; a test checks the README's table against this one.
REJECTIONS: dict[str, tuple[int, str]] = {
    "missing_auth": (401, "no Authorization header, or an empty one"),
    "bad_signature": (401, "not a JWT, or its HS256 signature does not verify with the key pair its issuer names"),
    "invalid_token": (
        401,
        (
            "a verified token LiveKit would not issue: no exp, no issuer, a lifetime beyond "
            "5 minutes, a non-string sha256 claim, claims livekit-api cannot read"
        ),
    ),
    "expired": (401, "the token's exp is more than 1 minute in the past"),
    "not_yet_valid": (401, "the token's nbf is more than 1 minute in the future (LiveKit's clock runs ahead)"),
    "unknown_key": (401, "the token's issuer is not a configured API key"),
    "hash_mismatch": (401, "the token's sha256 claim is missing, not base64, or not the SHA-256 of the body"),
    "malformed": (
        400,
        (
            "a validly signed body that is not a webhook event: not JSON, duplicate keys, no "
            "event name or id, a field of the wrong type or out of range"
        ),
    ),
    "too_large": (413, "the body exceeds webhooks.max_body_bytes"),
    "rate_limited": (503, "the token's API key sent more than webhooks.rate_limit webhooks a second (off by default)"),
    "unsupported_media_type": (415, "a Content-Type other than application/webhook+json or application/json"),
}
NO_AUTH = "no Authorization header: LiveKit signs every webhook; point only LiveKit here"
# A token may claim to live this long from now: LiveKit's 5 minutes, plus its clock running ahead.
MAX_TOKEN_LIFETIME = WEBHOOK_TOKEN_TTL + WEBHOOK_CLOCK_LEEWAY


class Rejected(Exception):
    """A request that is not a webhook we count; `detail` says what was wrong and what to do."""

    def __init__(self, reason: str, detail: str, retry_after: int = 0):
        super().__init__(detail)
        self.reason = reason
        self.status = REJECTIONS[reason][0]
        self.detail = detail
        self.retry_after = retry_after  # seconds, for a Retry-After header
        self.api_key: str | None = None  # the configured key the token names, when it names one


# -- verification -----------------------------------------------------------------------------


def _unverified_claims(token: str) -> dict[str, Any]:
    """The token's claims, read without trusting them: `iss` only picks the key to verify with,
    and the rest is read once the signature vouched for these very bytes."""
    try:
        _header, payload, _signature = token.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise Rejected("bad_signature", "the Authorization header is not a JWT") from None
    if not isinstance(claims, dict):
        raise Rejected("bad_signature", "the Authorization header is not a JWT (its payload is not an object)")
    return claims


# -- the quick way for the tokens LiveKit signs ----------------------------------------------------
#
# PyJWT spends most of its time reading the token (its base64url check goes character by character),
# and livekit-api then builds its Claims. joserfc checks the same HS256 signature in a third of the
# time. It is used to accept, never to refuse: a token takes the quick way only when it carries no
# more than LiveKit's webhook tokens do, so that what PyJWT and livekit-api would check of it comes
# down to the comparisons in _quick; any other token, and any the quick way does not accept, goes
# to TokenVerifier as before, which decides and words every refusal.

# The claims of LiveKit's webhook tokens (auth.AccessToken: issuer, validity, an empty identity as
# sub, the body's digest). Any other claim (a grant livekit-api parses, iat, aud, ...) is the full check's.
_QUICK_CLAIMS = frozenset({"iss", "exp", "nbf", "sub", "sha256"})
# And the header's: a kid, crit or b64 is the full check's.
_QUICK_HEADER = frozenset({"alg", "typ"})
_HS256_ONLY = jws.JWSRegistry(algorithms=["HS256"])


def _quick_key(secret: str) -> OctKey | None:
    """joserfc's key for a secret PyJWT and joserfc both take as it is, without a warning; None
    sends all of its tokens the full way (so PyJWT still warns of a short secret, or refuses a
    PEM-looking one)."""
    hs256 = HMACAlgorithm(HMACAlgorithm.SHA256)
    try:
        if not secret or hs256.check_key_length(hs256.prepare_key(secret)):
            return None
    except jwt.PyJWTError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # joserfc's SecurityWarning: a secret that looks like a key
        try:
            return OctKey.import_key(secret)
        except (ValueError, Warning):
            return None


class _KeyPair:
    """One configured key pair: livekit-api's TokenVerifier, and joserfc's key when it may be used."""

    __slots__ = ("full", "quick")

    def __init__(self, pair: KeyPair):
        secret = pair.api_secret.reveal()
        self.full = TokenVerifier(pair.api_key, secret, leeway=datetime.timedelta(seconds=WEBHOOK_CLOCK_LEEWAY))
        self.quick = _quick_key(secret)


def _quick(key: OctKey, token: str, unverified: dict[str, Any]) -> bytes | None:
    """The body digest, when the token is one of LiveKit's that verifies with `key` and that the full
    check would accept; None when it is not (the full check then decides)."""
    if not unverified.keys() <= _QUICK_CLAIMS:
        return None
    exp, nbf, sub, sha256 = (unverified.get(claim) for claim in ("exp", "nbf", "sub", "sha256"))
    # Plain ints only: a bool, a float or a string (PyJWT takes their int()) goes the full way.
    if type(exp) is not int or not (nbf is None or type(nbf) is int) or not (sub is None or isinstance(sub, str)):
        return None
    if not (isinstance(sha256, str) and sha256):
        return None
    # PyJWT's own comparisons (api_jwt._validate_exp / _validate_nbf), then ours from _checked.
    now = time.time()
    if exp <= now - WEBHOOK_CLOCK_LEEWAY or exp > now + MAX_TOKEN_LIFETIME:
        return None
    if nbf is not None and nbf > now + WEBHOOK_CLOCK_LEEWAY:
        return None
    try:
        signed = jws.deserialize_compact(token, key, registry=_HS256_ONLY)
        digest = base64.b64decode(sha256, validate=True)
    except (JoseError, ValueError):  # binascii.Error is a ValueError
        return None
    if not signed.headers().keys() <= _QUICK_HEADER:
        return None
    return digest


class Verifier:
    """Checks a request exactly as LiveKit signs it, with any of the configured key pairs."""

    def __init__(self, keys: Iterable[KeyPair]):
        self._by_key = {k.api_key: _KeyPair(k) for k in keys}
        self._index = {key: i for i, key in enumerate(self._by_key)}

    def verify_token(self, authorization: str) -> bytes:
        """The SHA-256 digest a configured key pair vouches for; raises Rejected otherwise."""
        return self.verify(authorization)[0]

    def key_index(self, api_key: str) -> int:
        """The position of a configured API key (for per-key state such as the rate limit)."""
        return self._index[api_key]

    def verify(self, authorization: str) -> tuple[bytes, str]:
        """(the SHA-256 digest, the API key) a configured key pair vouches for; raises Rejected otherwise."""
        token = authorization.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].lstrip()
        if not token:
            raise Rejected("missing_auth", NO_AUTH)
        unverified = _unverified_claims(token)
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise Rejected("invalid_token", "the token names no issuer (iss claim): it cannot come from LiveKit")
        pair = self._by_key.get(iss)
        if pair is None:
            raise Rejected(
                "unknown_key",
                f"signed with API key {iss[:40]!r}, which is not configured: add it to webhooks.keys "
                "(the key in LiveKit's webhook.api_key), or with projects to its project's webhook_keys",
            )
        if pair.quick is not None and (digest := _quick(pair.quick, token, unverified)) is not None:
            return digest, iss
        try:
            return self._checked(pair.full, token, unverified), iss
        except Rejected as rejected:
            rejected.api_key = iss  # counted under the key's project
            raise

    @staticmethod
    def _checked(verifier: TokenVerifier, token: str, unverified: dict[str, Any]) -> bytes:
        """The body digest the token, verified with its issuer's secret, vouches for."""
        iss = unverified["iss"]
        try:
            claims = verifier.verify(token)
        except jwt.ExpiredSignatureError:
            raise Rejected(
                "expired",
                "the token has expired: a replay, or the clocks of LiveKit and the "
                "exporter differ by more than a minute (check NTP on both)",
            ) from None
        except jwt.ImmatureSignatureError:
            raise Rejected(
                "not_yet_valid",
                "the token is not valid yet (nbf): LiveKit's clock runs more than "
                "a minute ahead of the exporter's (check NTP on both)",
            ) from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
            raise Rejected(
                "bad_signature",
                f"the signature does not verify with the secret of API key {iss!r}: check webhooks.keys",
            ) from None
        except jwt.InvalidTokenError as e:  # PyJWT's messages name the claim, never a value
            raise Rejected("invalid_token", f"the token is not one LiveKit issues: {str(e)[:120]}") from None
        except Exception as e:
            raise Rejected(
                "invalid_token",
                f"the token's claims are not ones LiveKit issues (livekit-api cannot read them: {type(e).__name__})",
            ) from None
        # These bytes are verified now, and PyJWT took int() of exp, so this cannot fail.
        exp, now = int(unverified["exp"]), time.time()
        if exp > now + MAX_TOKEN_LIFETIME:
            raise Rejected(
                "invalid_token",
                f"the token is valid for another {exp - int(now)} s: LiveKit signs "
                f"webhooks for {WEBHOOK_TOKEN_TTL:.0f} s, and a longer-lived token could be replayed "
                "after its event id is forgotten",
            )
        sha256 = claims.sha256
        if not isinstance(sha256, str):
            raise Rejected("invalid_token", "the token's sha256 claim is not a string")
        if not sha256:
            raise Rejected("hash_mismatch", "the token carries no sha256 claim, so it does not vouch for this body")
        try:
            return base64.b64decode(sha256, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("hash_mismatch", "the token's sha256 claim is not base64") from None

    @staticmethod
    def check_body(body: bytes, digest: bytes) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
            raise Rejected("hash_mismatch", "the body is not the one the token was signed for (altered on the way?)")
