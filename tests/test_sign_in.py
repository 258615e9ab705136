"""Sign-in end to end: a real Streamlit server with ``st.login`` configured against a local OpenID Connect
provider (``tests/oidc_provider.py``), driven in headless Chromium.

The secrets are written to a temporary ``secrets.toml`` passed with ``--secrets.files``, so no secret is
read from or written to the repository or ``~/.streamlit``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from explainers.reviews import ReviewStore
from tests.oidc_provider import USERS, Provider
from tests.test_browser import CHROMIUM, RENDER_TIMEOUT_MS, chromium, dashboard, free_port, wait_until_idle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium"),
]
CLIENT_ID = "vit-explainers-test"
ADMIN = USERS["carol"]["email"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The dashboard with sign-in against the local provider; its URL and its data folder."""
    folder = tmp_path_factory.mktemp("signin")
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oauth2callback"
    client_secret = secrets.token_urlsafe(24)
    with Provider(CLIENT_ID, client_secret, redirect) as provider:
        (folder / "secrets.toml").write_text(
            "[auth]\n"
            f'redirect_uri = "{redirect}"\n'
            f'cookie_secret = "{secrets.token_hex(32)}"\n'
            f'client_id = "{CLIENT_ID}"\n'
            f'client_secret = "{client_secret}"\n'
            f'server_metadata_url = "{provider.metadata_url}"\n'
            "[access]\n"
            f'admins = ["{ADMIN}"]\n'
            'allowed = ["@example.com"]\n'
        )
        with dashboard(folder, "--secrets.files", str(folder / "secrets.toml"), port=port) as url:
            yield url, folder / "data"


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def signed_in_page(browser, url: str, user: str, path: str = "/"):
    """A new browser session that opens ``path``, meets the sign-in page and signs in as ``user``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}{path}")
    page.get_by_text("sign in to open it").wait_for(timeout=RENDER_TIMEOUT_MS)
    assert page.locator("[data-testid=stImage]").count() == 0  # nothing of the app before sign-in
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name=f"Sign in as {user}").click()  # the provider's consent form
    page.wait_for_url(f"{url}/**", timeout=RENDER_TIMEOUT_MS)
    return page


def sign_in(browser, url: str, user: str, path: str = "/"):
    """:func:`signed_in_page`, once the app is shown to the user."""
    page = signed_in_page(browser, url, user, path)
    page.get_by_text(f"Signed in as {USERS[user]['email']}").wait_for(timeout=RENDER_TIMEOUT_MS)
    wait_until_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    return page


def delete_section(page):
    page.get_by_text("Delete this review").click()
    return page.locator("[data-testid=stExpander]").filter(has_text="Delete this review")


def test_sign_in_authorship_and_deletion_rights(site, browser):
    url, data = site
    page = sign_in(browser, url, "alice", "/?page=reviews")
    page.goto(f"{url}/?page=compare")
    wait_until_idle(page)
    page.get_by_text("Save to review board").first.click()
    page.get_by_text(f"Saved as {USERS['alice']['email']}").wait_for(timeout=RENDER_TIMEOUT_MS)
    assert page.get_by_role("textbox", name="Your name").count() == 0  # the author is who is signed in
    page.get_by_role("textbox", name="Notes").fill("Signed review")
    page.get_by_role("button", name="Save to review board").last.click()  # the form's, not the expander
    page.get_by_text("Saved as review #1").wait_for(timeout=RENDER_TIMEOUT_MS)
    saved = ReviewStore(data / "reviews.sqlite3").get(1).snapshot
    alice = USERS["alice"]["email"]
    assert (saved.author, saved.owner, saved.notes) == (alice, alice, "Signed review")

    page.goto(f"{url}/?page=reviews&review=1")
    wait_until_idle(page)
    assert delete_section(page).get_by_text("Yes, delete review #1").count() == 1  # the author may
    page.get_by_role("button", name="Sign out").click()
    page.get_by_text("sign in to open it").wait_for(timeout=RENDER_TIMEOUT_MS)
    page.close()

    page = sign_in(browser, url, "bob", "/?page=reviews&review=1")
    page.goto(f"{url}/?page=reviews&review=1")
    wait_until_idle(page)
    section = delete_section(page)
    section.get_by_text("Only the person who saved this review").wait_for(timeout=RENDER_TIMEOUT_MS)
    assert section.get_by_role("button", name="Delete", exact=True).count() == 0  # someone else may not
    page.close()

    page = sign_in(browser, url, "carol", "/?page=reviews&review=1")
    assert page.get_by_text(f"Signed in as {ADMIN} (admin)").count() == 1
    page.goto(f"{url}/?page=reviews&review=1")
    wait_until_idle(page)
    section = delete_section(page)
    section.get_by_text("Yes, delete review #1").click()  # an admin may
    section.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_text("No review matches").wait_for(timeout=RENDER_TIMEOUT_MS)
    assert ReviewStore(data / "reviews.sqlite3").find() == []
    page.close()


def test_an_account_outside_the_allowed_list_sees_nothing(site, browser):
    url, _ = site
    page = signed_in_page(browser, url, "dave")
    page.get_by_text("dave@other.org is not allowed on this server").wait_for(timeout=RENDER_TIMEOUT_MS)
    page.goto(f"{url}/?page=reviews")
    page.get_by_text("is not allowed on this server").wait_for(timeout=RENDER_TIMEOUT_MS)
    assert page.locator("[data-testid=stImage], [data-testid=stSidebar]").count() == 0
    page.close()
