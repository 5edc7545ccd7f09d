"""How the fake GitHub checks credentials: the App's JWT and installation tokens.

Pure: each check takes the `Authorization` header and what it is checked against (the App's
id and public key, the tokens issued, the server's clock) and returns what it found, or raises
`Refused` with GitHub's message and the reason; tests/fake_github.py turns that into GitHub's
error answer and records the rejection.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass

import jwt


class Refused(Exception):
    """A credential GitHub would refuse: `status` and `message` as GitHub says them, `why` ours."""

    def __init__(self, status: int, message: str, why: str):
        super().__init__(why)
        self.status, self.message, self.why = status, message, why


@dataclass
class Token:
    value: str
    installation_id: int
    expires_at: float
    repository_names: frozenset[str] | None  # None: every repository of the installation


def new_token_value() -> str:
    """An installation token in GitHub's format: `ghs_` and 36 letters or digits."""
    return "ghs_" + "".join(secrets.choice(string.ascii_letters + string.digits)
                            for _ in range(36))


def verify_app_jwt(authorization: str, *, app_id: int, client_id: str, public_key,
                   now: float) -> str:
    """Check the App's JWT like GitHub does; returns how `iss` named the App."""
    scheme, _, credential = authorization.partition(" ")
    if not credential:
        raise Refused(401, "Requires authentication", "no Authorization header")
    undecodable = "A JSON web token could not be decoded"
    if scheme.lower() != "bearer":
        raise Refused(401, undecodable, f"{undecodable} ({scheme} is not Bearer)")
    try:
        header = jwt.get_unverified_header(credential)
        claims = jwt.decode(credential, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Refused(401, undecodable, f"{undecodable} ({exc})") from None
    iss = claims.get("iss")
    if iss == app_id and isinstance(iss, int) and not isinstance(iss, bool):
        iss_kind = "int"
    elif iss == str(app_id):
        iss_kind = "str"
    elif iss == client_id:
        iss_kind = "client_id"
    else:
        raise Refused(401, "Integration not found",
                      f"Integration not found: iss={iss!r}, app id is {app_id}")
    if header.get("alg") != "RS256":
        raise Refused(401, undecodable, f"{undecodable} (alg {header.get('alg')})")
    try:
        jwt.decode(credential, public_key, algorithms=["RS256"],
                   options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                            "verify_iss": False, "verify_aud": False})
    except jwt.PyJWTError as exc:
        raise Refused(401, undecodable, f"{undecodable} ({exc})") from None
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or iat > now:
        message = "'Issued at' claim ('iat') must be an Integer representing a time in the past"
        raise Refused(401, message, f"{message} (iat={iat!r}, server now={now:.0f})")
    if not isinstance(exp, int) or exp <= now:
        message = ("'Expiration time' claim ('exp') must be a numeric value representing "
                   "the future time at which the assertion expires")
        raise Refused(401, message, f"{message} (exp={exp!r}, server now={now:.0f})")
    if exp > now + 600:
        message = "'Expiration time' claim ('exp') is too far in the future"
        raise Refused(401, message,
                      f"{message} (exp is {exp - now:.0f} s ahead of server's clock)")
    return iss_kind


def verify_installation_token(authorization: str, tokens: Mapping[str, Token],
                              now: float) -> Token:
    """The unexpired installation token the header carries (`token ...` or `Bearer ...`)."""
    scheme, _, credential = authorization.partition(" ")
    if not credential:
        raise Refused(401, "Requires authentication", "no Authorization header")
    token = tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
    if token is None:
        kind = "a JWT" if credential.count(".") == 2 else "an unknown token"
        raise Refused(401, "Bad credentials",
                      f"Bad credentials: {kind} where an installation token belongs")
    if token.expires_at <= now:
        raise Refused(401, "Bad credentials", f"Bad credentials: the installation "
                      f"token expired {now - token.expires_at:.0f} s ago")
    return token


def check_repository_access(token: Token, repo, full_name: str) -> None:
    """Refuse with GitHub's 404 unless `repo` (None: unknown) is one the token may see."""
    visible = (repo is not None and repo.installation_id == token.installation_id
               and (token.repository_names is None
                    or repo.name.lower() in token.repository_names))
    if not visible:
        raise Refused(404, "Not Found", f"Not Found: installation "
                      f"{token.installation_id} cannot see {full_name}")
