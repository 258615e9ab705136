"""A small OpenID Connect provider on 127.0.0.1 for the sign-in test (test-only, never for real use).

What a real provider offers to Streamlit's ``st.login`` (Authlib's OIDC client), and nothing more:

- ``/.well-known/openid-configuration``: discovery (issuer, endpoints, RS256);
- ``/jwks``: the public key that signs the ID tokens (a fresh RSA key per provider);
- ``/authorize``: a form listing :data:`USERS`, one "Sign in as …" button each (consent by clicking);
  it checks the client id, the exact redirect URI and ``response_type=code``, and redirects back with
  a one-time code and the client's ``state``;
- ``/token``: the authorization-code grant, with the client secret (HTTP Basic or in the form); it
  returns an access token and an RS256 ID token (``iss``, ``aud``, ``sub``, ``exp``, ``iat``, the
  client's ``nonce``, ``email``, ``name``), signed with joserfc, Authlib's JOSE library;
- ``/userinfo``: the claims of the user an access token was issued to.
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey

USERS = {
    "alice": {"sub": "user-alice", "email": "alice@example.com", "name": "Alice"},
    "bob": {"sub": "user-bob", "email": "bob@example.com", "name": "Bob"},
    "carol": {"sub": "user-carol", "email": "carol@example.com", "name": "Carol"},
    "dave": {"sub": "user-dave", "email": "dave@other.org", "name": "Dave"},
}


class Provider:
    """The provider for one client (``client_id``, ``client_secret``, ``redirect_uri``); a context manager
    that serves it on a free port of 127.0.0.1 (``url``) in a background thread."""

    def __init__(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.client_id, self.client_secret, self.redirect_uri = client_id, client_secret, redirect_uri
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig"}, private=True)
        self.codes: dict[str, tuple[str, str | None]] = {}  # code → (user, nonce)
        self.access: dict[str, str] = {}  # access token → user
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Provider:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def discovery(self) -> dict:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "claims_supported": ["sub", "email", "name"],
        }

    def id_token(self, user: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": self.client_id, "iat": now, "exp": now + 600, **USERS[user],
                  "email_verified": True}
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def send(self, status: int, body: bytes | str | dict, kind: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if isinstance(body, dict) else (
                body.encode() if isinstance(body, str) else body)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/.well-known/openid-configuration":
                self.send(200, provider.discovery())
            elif parts.path == "/jwks":
                self.send(200, {"keys": [provider.key.as_dict(private=False)]})
            elif parts.path == "/authorize":
                self.authorize_form(query)
            elif parts.path == "/userinfo":
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                user = provider.access.get(token)
                self.send(200, USERS[user]) if user else self.send(401, {"error": "invalid_token"})
            else:
                self.send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path == "/authorize":
                self.authorize(self.form())
            elif path == "/token":
                self.token(self.form())
            else:
                self.send(404, {"error": "not_found"})

        def bad_request(self, query: dict[str, str]) -> str | None:
            if query.get("client_id") != provider.client_id:
                return "unknown client"
            if query.get("redirect_uri") != provider.redirect_uri:
                return "redirect_uri is not the registered one"
            if query.get("response_type") != "code" or "openid" not in query.get("scope", "").split():
                return "only the authorization code flow with scope openid is supported"
            return None

        def authorize_form(self, query: dict[str, str]) -> None:
            problem = self.bad_request(query)
            if problem:
                self.send(400, problem, "text/plain")
                return
            hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                             for k, v in query.items())
            buttons = "".join(f'<button name="user" value="{u}">Sign in as {u}</button>' for u in USERS)
            page = (f"<!doctype html><title>Test provider</title><h1>Test provider</h1>"
                    f'<form method="post" action="/authorize">{hidden}{buttons}</form>')
            self.send(200, page, "text/html; charset=utf-8")

        def authorize(self, form: dict[str, str]) -> None:
            problem = self.bad_request(form)
            if problem or form.get("user") not in USERS:
                self.send(400, problem or "unknown user", "text/plain")
                return
            code = secrets.token_urlsafe(16)
            provider.codes[code] = (form["user"], form.get("nonce"))
            target = f"{form['redirect_uri']}?{urlencode({'code': code, 'state': form.get('state', '')})}"
            self.send(302, b"", "text/plain", {"Location": target})

        def token(self, form: dict[str, str]) -> None:
            client_id, secret = form.get("client_id"), form.get("client_secret")
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            if (client_id, secret) != (provider.client_id, provider.client_secret):
                self.send(401, {"error": "invalid_client"})
                return
            grant = provider.codes.pop(form.get("code", ""), None)  # one use only
            if form.get("grant_type") != "authorization_code" or grant is None \
                    or form.get("redirect_uri") != provider.redirect_uri:
                self.send(400, {"error": "invalid_grant"})
                return
            user, nonce = grant
            access = secrets.token_urlsafe(16)
            provider.access[access] = user
            self.send(200, {"access_token": access, "token_type": "Bearer", "expires_in": 600,
                            "scope": "openid email profile", "id_token": provider.id_token(user, nonce)})

    return Handler
