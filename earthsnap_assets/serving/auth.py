"""Optional bearer-token auth of the endpoint (issue 13): who may ask for predictions, feedback and stats.

Off unless tokens are configured (`earthsnap serve --auth-token-file PATH` and/or EARTHSNAP_SERVE_TOKENS,
comma-separated). When on, every route but the kubelet's probes (`/health`, `/ready`) needs
`Authorization: Bearer <token>`; anything else gets 401 JSON with `WWW-Authenticate: Bearer`, before the
body is read. Several tokens may be valid at once (rotation: add the new one, move the clients, drop the
old one). Only the tokens' sha256 digests are kept in memory; a presented token is hashed and compared with
every digest by `hmac.compare_digest`, without stopping at a match, so timing says nothing about which
token or how much of it matched. Clients (stage tests, the CLI's demo) send EARTHSNAP_SERVE_TOKEN.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKENS_ENV = "EARTHSNAP_SERVE_TOKENS"  # the endpoint's accepted tokens, comma-separated
CLIENT_TOKEN_ENV = "EARTHSNAP_SERVE_TOKEN"  # the one token a client sends
OPEN_PATHS = frozenset({"/health", "/ready"})  # kubelet probes carry no token
MIN_TOKEN_CHARS = 16
# visible ASCII but the separators of the token file and of EARTHSNAP_SERVE_TOKENS
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str) -> list[str]:
    """Tokens in `text`: separated by commas or newlines; blank entries and `#` comment lines are skipped."""
    tokens = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for entry in line.split(","):
            token = entry.strip()
            if not token:
                continue
            if len(token) < MIN_TOKEN_CHARS or not set(token) <= _TOKEN_CHARS:
                raise ValueError(
                    f"a token in {source} is not usable: a token needs at least {MIN_TOKEN_CHARS} visible ASCII "
                    "characters (no space or comma), e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
            tokens.append(token)
    return tokens


class AuthTokens:
    """The sha256 digests of the accepted bearer tokens (never the tokens); `bool()` is False when auth is off."""

    __slots__ = ("_digests",)

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._digests = tuple(sorted({_digest(token) for token in tokens}))

    @classmethod
    def load(cls, token_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> AuthTokens:
        """Tokens of `token_file` and of EARTHSNAP_SERVE_TOKENS together; none of either: auth off.

        A file, or a variable, that is given but holds no token is an error: it means auth was wanted.
        """
        environ = os.environ if environ is None else environ
        tokens: list[str] = []
        if token_file is not None:
            found = parse_tokens(Path(token_file).read_text(), str(token_file))
            if not found:
                raise ValueError(f"auth token file {token_file} holds no token")
            tokens += found
        if TOKENS_ENV in environ:
            found = parse_tokens(environ[TOKENS_ENV], TOKENS_ENV)
            if not found:
                raise ValueError(f"{TOKENS_ENV} is set but holds no token (unset it to turn auth off)")
            tokens += found
        return cls(tokens)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"AuthTokens({len(self)} token{'' if len(self) == 1 else 's'})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuthTokens) and self._digests == other._digests

    def __hash__(self) -> int:
        return hash(self._digests)

    @property
    def mode(self) -> str:
        """What `/ready` and `/models` say: `bearer` or `off`."""
        return "bearer" if self else "off"

    def accepts(self, token: str) -> bool:
        """Whether `token` is one of them: compared, in constant time, with every digest (no early exit)."""
        presented = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive); else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def bearer_headers(token: str | None) -> dict[str, str]:
    """What a client adds to its requests: `Authorization: Bearer <token>`, or nothing without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The token a client sends: EARTHSNAP_SERVE_TOKEN (None when unset or empty)."""
    environ = os.environ if environ is None else environ
    return environ.get(CLIENT_TOKEN_ENV, "").strip() or None


class BearerAuth:
    """ASGI middleware: 401 JSON unless the request carries an accepted bearer token (`OPEN_PATHS` excepted)."""

    def __init__(self, app: ASGIApp, tokens: AuthTokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            values = [value for name, value in scope["headers"] if name == b"authorization"]
            token = bearer_token(values[0].decode("latin-1")) if len(values) == 1 else None
            if token is None:
                await _unauthorized("missing bearer token: send `Authorization: Bearer <token>`", "Bearer")(
                    scope, receive, send
                )
                return
            if not self.tokens.accepts(token):
                await _unauthorized("invalid bearer token", 'Bearer error="invalid_token"')(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _unauthorized(message: str, challenge: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": challenge})
