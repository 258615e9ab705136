"""Sign-in for a shared server, with Streamlit's own OpenID Connect support (``st.login``, ``st.user``).

It is on when the server's ``.streamlit/secrets.toml`` has an ``[auth]`` section (Streamlit's keys:
``redirect_uri``, ``cookie_secret``, ``client_id``, ``client_secret``, ``server_metadata_url``). Then
every page asks for sign-in first, a review's author is the signed-in identity, and a review can be
deleted only by the identity that saved it or by an admin listed in the same file; ``allowed`` (optional)
limits who may use the server at all, by address or by ``@domain`` (a provider such as Google signs in
anyone who has an account)::

    [access]
    admins = ["alice@example.com"]
    allowed = ["@example.com", "guest@partner.org"]

Without ``[auth]`` the app runs as before, without accounts (meant for 127.0.0.1).
"""

from __future__ import annotations

import streamlit as st

from dashboard.markup import escape


def enabled() -> bool:
    """Whether the server configures sign-in (an ``[auth]`` section in its secrets)."""
    return st.secrets.load_if_toml_exists() and "auth" in st.secrets


def _access(name: str) -> list[str]:
    return list(st.secrets.get("access", {}).get(name, []))


def allowed(user: str) -> bool:
    """Whether ``user`` may use the server: listed in ``[access] allowed``, by address or ``@domain``
    (everyone the provider signs in when there is no list); letter case does not matter."""
    rules = [rule.lower() for rule in _access("allowed")]
    user = user.lower()
    return not rules or user in rules or any(r.startswith("@") and user.endswith(r) for r in rules)


def require() -> None:
    """Stop the run with a sign-in button unless sign-in is off or an allowed visitor is signed in."""
    if not enabled() or (st.user.is_logged_in and allowed(identity() or "")):
        return
    st.title("ViT explainers")
    if st.user.is_logged_in:
        st.error(f"{escape(identity())} is not allowed on this server: ask its operator, or sign out and "
                 "sign in with another account.")
        st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="auth.logout")
    else:
        st.write("This server is shared by a team: sign in to open it.")
        st.button("Sign in", type="primary", icon=":material/login:", on_click=st.login, key="auth.login")
    st.stop()


def identity() -> str | None:
    """The signed-in identity (the provider's e-mail, else its subject id); None when sign-in is off."""
    if not enabled() or not st.user.is_logged_in:
        return None
    return str(st.user.get("email") or st.user.get("sub"))


def is_admin() -> bool:
    """Whether the signed-in identity is among ``[access] admins`` in the server's secrets."""
    user = identity()
    return user is not None and user in _access("admins")


def may_delete(owner: str | None) -> bool:
    """Whether this session may delete a review saved by ``owner`` (anyone, when sign-in is off)."""
    return not enabled() or is_admin() or (owner is not None and owner == identity())


def account() -> None:
    """Who is signed in, and a sign-out button (nothing when sign-in is off)."""
    user = identity()
    if user is None:
        return
    st.caption(f"Signed in as {escape(user)}" + (" (admin)" if is_admin() else ""))
    st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="auth.logout")
