"""The browser client (messenger/web/static) in a real Chromium against gunicorn.

Playwright drives Debian's Chromium (/usr/bin/chromium); no browser is downloaded.
Without Chromium or Playwright these tests are skipped on a developer machine and
fail in CI (CI=true), which installs both. Screenshots of the main screens are
saved to artifacts/screenshots/ for a person to look at. Every page must run without
a script error: a module that fails to load or link shows up as one.
"""

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import Services, require_program, unique_handle
from tests.system.conftest import ROOT, Server, start_gunicorn

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
STATIC = ROOT / "messenger" / "web" / "static"
# What a module script may be served as: browsers refuse it under any other type
# (the app sends X-Content-Type-Options: nosniff, so there is no guessing either).
JAVASCRIPT_TYPES = {"text/javascript", "application/javascript"}
CHROMIUM_ARGS = [
    # As root, Chromium's sandbox cannot start; the page is our own.
    "--no-sandbox",
    "--disable-gpu",
    # Containers often have a tiny /dev/shm; Chromium crashes tabs when it is full.
    "--disable-dev-shm-usage",
    # The network is closed: no update checks, sync, field trials or QUIC probes.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WIDE = {"width": 1100, "height": 700}
PHONE = {"width": 390, "height": 760}
# Bounds for anything the page should do "at once" (delivery, rendering): generous
# for a loaded CI machine, tiny next to a test run.
UI_TIMEOUT_MS = 10_000
PASSWORD = "password123"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


def _chromium() -> str:
    return require_program("chromium", "chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    expect.set_options(timeout=UI_TIMEOUT_MS)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            timeout=30_000,
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def web(
    services: Services, settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server = start_gunicorn(services, tmp_path_factory.mktemp("browser"), workers=2)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Account:
    id: int
    handle: str
    display_name: str
    token: str  # an API session of its own, for checks from outside the browser

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def account(web: Server) -> Any:
    """Register a user through the API (faster than the form)."""

    def make(display_name: str) -> Account:
        handle = unique_handle(display_name.lower())
        body = {"handle": handle, "password": PASSWORD, "display_name": display_name}
        r = requests.post(web.url + "/v1/users", json=body, timeout=10)
        assert r.status_code == 201, r.text
        login = {"handle": handle, "password": PASSWORD}
        r = requests.post(web.url + "/v1/sessions", json=login, timeout=10)
        assert r.status_code == 201, r.text
        return Account(r.json()["user"]["id"], handle, display_name, r.json()["token"])

    return make


def watch_errors(page: Any) -> list[str]:
    """Collect the page's script errors, and its failed loads of anything but the API.

    Failed API calls are the tests' doing (a wrong password answers 401, an outage
    aborts requests) and the page shows them in its own UI.
    """
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        url = msg.location.get("url", "")
        if msg.text.startswith("Failed to load resource") and "/v1/" in url:
            return
        errors.append(f"console error: {msg.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    return errors


@pytest.fixture
def open_page(browser: Any, web: Server) -> Iterator[Any]:
    """A page in a fresh browser context (its own sessionStorage: one person).

    At the end of the test, no page may have logged a script error.
    """
    contexts: list[Any] = []
    errors_per_page: list[list[str]] = []

    def open_(viewport: dict[str, int] = WIDE) -> Any:
        context = browser.new_context(viewport=viewport, base_url=web.url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        errors_per_page.append(watch_errors(page))
        page.goto("/")
        return page

    try:
        yield open_
    finally:
        for context in contexts:
            context.close()
    errors = [error for errors in errors_per_page for error in errors]
    assert not errors, errors


def tid(page: Any, test_id: str) -> Any:
    return page.get_by_test_id(test_id)


def log_in(page: Any, user: Account) -> None:
    from playwright.sync_api import expect

    expect(tid(page, "auth-view")).to_be_visible()
    tid(page, "login-handle").fill(user.handle)
    tid(page, "login-password").fill(PASSWORD)
    tid(page, "login-button").click()
    wait_live(page)
    expect(tid(page, "me-name")).to_contain_text(user.display_name)


def wait_live(page: Any, timeout_ms: int = UI_TIMEOUT_MS) -> None:
    from playwright.sync_api import expect

    expect(tid(page, "app-view")).to_be_visible()
    expect(tid(page, "connection-status")).to_have_attribute(
        "data-state", "live", timeout=timeout_ms
    )


def open_direct(page: Any, peer: Account) -> int:
    from playwright.sync_api import expect

    tid(page, "new-direct-handle").fill(peer.handle)
    tid(page, "new-direct-button").click()
    expect(tid(page, "chat-title")).to_have_text(peer.display_name)
    return int(tid(page, "chat").get_attribute("data-conversation-id"))


def send(page: Any, text: str) -> None:
    tid(page, "message-input").fill(text)
    tid(page, "message-input").press("Enter")


def message(page: Any, body: str) -> Any:
    """The message element(s) of the open chat with exactly this body."""
    return tid(page, "message").filter(
        has=page.get_by_test_id("message-body").get_by_text(body, exact=True)
    )


def expect_message(page: Any, body: str, *, own: bool) -> Any:
    from playwright.sync_api import expect

    found = message(page, body)
    expect(found).to_have_count(1)
    expect(found).to_have_attribute("data-own", "true" if own else "false")
    expect(found).to_have_attribute("data-seq", str_re(r"\d+"))
    return found


def str_re(pattern: str) -> Any:
    import re

    return re.compile(pattern)


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def history(web: Server, user: Account, conversation_id: int) -> list[dict[str, Any]]:
    r = requests.get(
        f"{web.url}/v1/conversations/{conversation_id}/messages",
        headers=user.headers,
        params={"limit": 200},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["messages"]  # type: ignore[no-any-return]


def test_page_loads_every_module_as_javascript(browser: Any, web: Server) -> None:
    """index.html names app.js; its imports must bring in every module shipped, each
    served with a JavaScript type, under the page's CSP, without a script error."""
    from playwright.sync_api import expect

    context = browser.new_context(base_url=web.url)
    try:
        page = context.new_page()
        scripts: dict[str, tuple[int, str]] = {}

        def on_response(response: Any) -> None:
            path = urlsplit(response.url).path
            if path.endswith(".js"):
                content_type = response.header_value("content-type") or ""
                scripts[path] = (response.status, content_type.split(";")[0].strip())

        page.on("response", on_response)
        errors = watch_errors(page)
        answer = page.goto("/")  # module scripts run before "load", where this returns
        assert not errors, errors
        expect(tid(page, "auth-view")).to_be_visible()
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        shipped = {f"/static/{path.name}" for path in STATIC.glob("*.js")}
        assert set(scripts) == shipped
        for path, (status, content_type) in scripts.items():
            assert status == 200, path
            assert content_type in JAVASCRIPT_TYPES, (path, content_type)
        assert not errors, errors
    finally:
        context.close()


def test_register_and_chat_both_ways_in_real_time(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    bob = account("Bob")
    alice_page = open_page()
    expect(tid(alice_page, "auth-view")).to_be_visible()
    screenshot(alice_page, "login")
    # Alice creates her account with the form.
    alice_handle = unique_handle("alice")
    tid(alice_page, "login-handle").fill(alice_handle)
    tid(alice_page, "login-password").fill(PASSWORD)
    tid(alice_page, "register-display-name").fill("Alice")
    tid(alice_page, "register-button").click()
    wait_live(alice_page)
    expect(tid(alice_page, "me-name")).to_contain_text("Alice")
    bob_page = open_page()
    log_in(bob_page, bob)

    conversation_id = open_direct(alice_page, bob)
    send(alice_page, "Hi Bob! Lunch?")
    expect_message(alice_page, "Hi Bob! Lunch?", own=True)
    # Bob, looking at his list, sees the new chat arrive with an unread badge.
    item = tid(bob_page, "conversation-item").filter(has_text="Alice")
    expect(item).to_have_attribute("data-conversation-id", str(conversation_id))
    expect(item.get_by_test_id("unread-badge")).to_have_text(str_re("1"))
    expect(item.get_by_test_id("conversation-preview")).to_contain_text(
        "Hi Bob! Lunch?"
    )
    screenshot(bob_page, "conversation-list")
    item.click()
    expect_message(bob_page, "Hi Bob! Lunch?", own=False)
    # Bob opened it: Alice's tick turns to "read", Bob's badge goes away.
    expect(message(alice_page, "Hi Bob! Lunch?")).to_have_attribute(
        "data-status", "read"
    )
    expect(item.get_by_test_id("unread-badge")).to_have_count(0)

    send(bob_page, "Sure, at noon.")
    expect_message(alice_page, "Sure, at noon.", own=False)
    send(alice_page, "See you there")
    expect_message(bob_page, "See you there", own=False)
    screenshot(alice_page, "chat")
    bodies = [m["body"] for m in history(web, bob, conversation_id)]
    assert bodies == ["Hi Bob! Lunch?", "Sure, at noon.", "See you there"]


def test_enter_on_the_form_registers_when_a_display_name_is_given(
    open_page: Any,
) -> None:
    """Enter submits the form: with a display name filled in (only used for new
    accounts) it creates the account; a wrong login suggests "Create account"."""
    from playwright.sync_api import expect

    page = open_page()
    expect(tid(page, "auth-view")).to_be_visible()
    handle = unique_handle("enter")
    tid(page, "login-handle").fill(handle)
    tid(page, "login-password").fill(PASSWORD)
    tid(page, "login-password").press("Enter")  # no display name: a login
    expect(tid(page, "auth-error")).to_contain_text("Create account")
    tid(page, "register-display-name").fill("Enter Key")
    tid(page, "register-display-name").press("Enter")
    wait_live(page)
    expect(tid(page, "me-name")).to_contain_text("Enter Key")


def test_reload_keeps_the_conversation(open_page: Any, account: Any) -> None:
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    alice_page, bob_page = open_page(), open_page()
    log_in(alice_page, alice)
    log_in(bob_page, bob)
    open_direct(alice_page, bob)
    send(alice_page, "before the reload")
    expect_message(alice_page, "before the reload", own=True)

    alice_page.reload()
    # Still logged in (the session is in sessionStorage), back in the same chat.
    wait_live(alice_page)
    expect(tid(alice_page, "chat-title")).to_have_text("Bob")
    expect_message(alice_page, "before the reload", own=True)
    # ...and the page is live again: both directions still work.
    tid(bob_page, "conversation-item").filter(has_text="Alice").click()
    send(bob_page, "after the reload")
    expect_message(alice_page, "after the reload", own=False)
    send(alice_page, "still here")
    expect_message(bob_page, "still here", own=False)
    expect(tid(alice_page, "message")).to_have_count(3)


def test_group_of_three(open_page: Any, account: Any, web: Server) -> None:
    from playwright.sync_api import expect

    alice, bob, carol = account("Alice"), account("Bob"), account("Carol")
    pages = {name: open_page() for name in ("alice", "bob", "carol")}
    for name, user in (("alice", alice), ("bob", bob), ("carol", carol)):
        log_in(pages[name], user)

    alice_page = pages["alice"]
    tid(alice_page, "new-group-toggle").click()
    tid(alice_page, "group-title").fill("Lunch crew")
    tid(alice_page, "group-members").fill(f"{bob.handle}, @{carol.handle}")
    tid(alice_page, "create-group-button").click()
    expect(tid(alice_page, "chat-title")).to_have_text("Lunch crew")
    conversation_id = int(tid(alice_page, "chat").get_attribute("data-conversation-id"))
    send(alice_page, "Pizza or sushi?")

    for name in ("bob", "carol"):
        page = pages[name]
        tid(page, "conversation-item").filter(has_text="Lunch crew").click()
        expect_message(page, "Pizza or sushi?", own=False)
    send(pages["bob"], "Pizza!")
    send(pages["carol"], "Sushi, please")
    for name, page in pages.items():
        expect_message(page, "Pizza!", own=name == "bob")
        expect_message(page, "Sushi, please", own=name == "carol")
        expect(tid(page, "message")).to_have_count(3)
    # Senders are named in a group.
    expect(message(alice_page, "Pizza!").get_by_test_id("message-sender")).to_have_text(
        "Bob"
    )
    screenshot(alice_page, "group-chat")
    tid(alice_page, "members-button").click()
    expect(tid(alice_page, "member")).to_have_count(3)
    screenshot(alice_page, "group-members")
    bodies = [m["body"] for m in history(web, carol, conversation_id)]
    assert sorted(bodies) == sorted(["Pizza or sushi?", "Pizza!", "Sushi, please"])
    assert bodies[0] == "Pizza or sushi?"


def test_group_members_panel(open_page: Any, account: Any) -> None:
    """Rename, add, remove, leave and delete (two clicks) from the members panel."""
    from playwright.sync_api import expect

    alice, bob, carol = account("Alice"), account("Bob"), account("Carol")
    alice_page, bob_page = open_page(), open_page()
    log_in(alice_page, alice)
    log_in(bob_page, bob)
    tid(alice_page, "new-group-toggle").click()
    tid(alice_page, "group-title").fill("Book club")
    tid(alice_page, "group-members").fill(bob.handle)
    tid(alice_page, "create-group-button").click()
    expect(tid(alice_page, "chat-title")).to_have_text("Book club")
    tid(alice_page, "members-button").click()
    expect(tid(alice_page, "members-button")).to_have_attribute("aria-expanded", "true")
    expect(tid(alice_page, "member")).to_have_count(2)

    tid(alice_page, "rename-title").fill("Reading club")
    tid(alice_page, "rename-button").click()
    expect(tid(alice_page, "chat-title")).to_have_text("Reading club")
    bob_item = tid(bob_page, "conversation-item").filter(has_text="Reading club")
    expect(bob_item).to_have_count(1)

    tid(alice_page, "add-member-handle").fill(carol.handle)
    tid(alice_page, "add-member-button").click()
    carol_row = tid(alice_page, "member").and_(
        alice_page.locator(f'[data-user-id="{carol.id}"]')
    )
    expect(carol_row).to_contain_text("Carol")
    carol_row.get_by_test_id("remove-member-button").click()
    expect(carol_row).to_have_count(0)

    bob_item.click()
    expect(tid(bob_page, "chat-title")).to_have_text("Reading club")
    tid(bob_page, "members-button").click()
    expect(tid(bob_page, "delete-conversation-button")).to_be_hidden()
    tid(bob_page, "leave-button").click()
    expect(tid(bob_page, "list-error")).to_have_text("You left “Reading club”.")
    expect(tid(bob_page, "chat-placeholder")).to_be_visible()
    expect(bob_item).to_have_count(0)
    expect(tid(alice_page, "member")).to_have_count(1)

    delete = tid(alice_page, "delete-conversation-button")
    delete.click()
    expect(delete).to_have_text("Click again to delete")
    delete.click()
    expect(tid(alice_page, "list-error")).to_have_text("“Reading club” was deleted.")
    expect(tid(alice_page, "chat-placeholder")).to_be_visible()
    expect(tid(alice_page, "conversation-item")).to_have_count(0)


class Outage:
    """Alice's browser loses the server for a while (page.route).

    The first send reaches the server and is stored, but its answer is lost; the
    next one does not get through at all; the third one does, and answers 200
    because the server already has that client_msg_id. Meanwhile Alice's long polls
    fail too (so the stored message cannot reach her page as an event, which would
    make the retry unnecessary); they recover once a send went through.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.on = False
        self.sends: list[tuple[str, int | None]] = []  # (client_msg_id, status)

    def events(self, route: Any) -> None:
        if self.on:
            route.abort("internetdisconnected")
        else:
            route.continue_()

    def messages(self, route: Any) -> None:
        request = route.request
        if request.method != "POST" or not self.on:
            route.continue_()
            return
        client_msg_id = json.loads(request.post_data)["client_msg_id"]
        attempt = len(self.sends) + 1
        if attempt == 1:
            stored = route.fetch()
            self.sends.append((client_msg_id, stored.status))
            route.abort("connectionreset")
        elif attempt == 2:
            self.sends.append((client_msg_id, None))
            route.abort("internetdisconnected")
        else:
            answer = route.fetch()
            self.sends.append((client_msg_id, answer.status))
            self.on = False
            route.fulfill(response=answer)


def test_message_sent_during_an_outage_is_delivered_once(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    alice_page, bob_page = open_page(), open_page()
    outage = Outage()
    alice_page.route("**/v1/events*", outage.events)
    alice_page.route("**/v1/conversations/*/messages", outage.messages)
    log_in(alice_page, alice)
    log_in(bob_page, bob)
    conversation_id = open_direct(alice_page, bob)
    tid(bob_page, "conversation-item").filter(has_text="Alice").click()
    bob_cursor = requests.get(
        f"{web.url}/v1/events", headers=bob.headers, timeout=10
    ).json()["cursor"]

    # The outage starts; a message from Bob answers Alice's poll held since before
    # (so no poll of hers is waiting on the server), and her next poll fails.
    outage.on = True
    r = requests.post(
        f"{web.url}/v1/conversations/{conversation_id}/messages",
        headers=bob.headers,
        timeout=10,
        json={"client_msg_id": "before-outage", "body": "Are you there?"},
    )
    assert r.status_code == 201, r.text
    expect_message(alice_page, "Are you there?", own=False)
    expect(tid(alice_page, "connection-status")).not_to_have_attribute(
        "data-state", "live"
    )

    send(alice_page, "sent into the void")
    unsent = message(alice_page, "sent into the void")
    expect(unsent).to_have_attribute("data-status", "failed")
    expect(unsent.get_by_test_id("message-error")).to_contain_text("Not sent")
    # The client retries by itself (backoff) with the same client_msg_id.
    expect(unsent).to_have_attribute("data-seq", str_re(r"\d+"), timeout=15_000)
    expect_message(alice_page, "sent into the void", own=True)
    expect_message(bob_page, "sent into the void", own=False)

    assert len(outage.sends) == 3, outage.sends
    client_msg_ids = {client_msg_id for client_msg_id, _ in outage.sends}
    assert len(client_msg_ids) == 1, outage.sends
    assert [status for _, status in outage.sends] == [201, None, 200]
    stored = [
        m
        for m in history(web, bob, conversation_id)
        if m["body"] == "sent into the void"
    ]
    assert len(stored) == 1
    assert stored[0]["client_msg_id"] in client_msg_ids
    # One event for Bob: the retry stored nothing and announced nothing.
    events = requests.get(
        f"{web.url}/v1/events",
        headers=bob.headers,
        timeout=10,
        params={"after": bob_cursor, "timeout": 0, "limit": 500},
    )
    bodies = [
        e["message"]["body"] for e in events.json()["events"] if e["type"] == "message"
    ]
    assert bodies == ["Are you there?", "sent into the void"]
    # Alice's poll comes back by itself (after its backoff, at most 30 s) and the
    # event of her own message does not add a copy.
    wait_live(alice_page, timeout_ms=35_000)
    expect(message(alice_page, "sent into the void")).to_have_count(1)
    expect(message(bob_page, "sent into the void")).to_have_count(1)


def test_phone_sized_screen_shows_one_pane_at_a_time(
    open_page: Any, account: Any
) -> None:
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    bob_page = open_page(PHONE)
    log_in(bob_page, bob)
    alice_page = open_page()
    log_in(alice_page, alice)
    open_direct(alice_page, bob)
    send(alice_page, "Are you on your phone?")

    expect(tid(bob_page, "app-view")).to_have_attribute("data-view", "list")
    item = tid(bob_page, "conversation-item").filter(has_text="Alice")
    expect(item.get_by_test_id("unread-badge")).to_be_visible()
    screenshot(bob_page, "phone-list")
    item.click()
    expect(tid(bob_page, "app-view")).to_have_attribute("data-view", "chat")
    expect(tid(bob_page, "conversation-list")).not_to_be_visible()
    expect_message(bob_page, "Are you on your phone?", own=False)
    send(bob_page, "Yes, replying from the bus.")
    expect_message(alice_page, "Yes, replying from the bus.", own=False)
    expect(tid(bob_page, "message-input")).to_be_in_viewport()
    screenshot(bob_page, "phone-chat")
    tid(bob_page, "back-button").click()
    expect(tid(bob_page, "app-view")).to_have_attribute("data-view", "list")
    expect(tid(bob_page, "conversation-list")).to_be_visible()


def test_a_message_arriving_while_its_new_chat_loads_is_listed(
    open_page: Any, account: Any, web: Server
) -> None:
    """Someone starts a chat with Bob and writes at once. Its first event makes
    Bob's page load the conversation; the message's event arrives while that
    answer, read before the message existed, is still on its way. The list must
    show the message (unread, last message) all the same."""
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    bob_page = open_page()
    log_in(bob_page, bob)
    sent: list[int] = []

    def answer_after_the_message(route: Any) -> None:
        if route.request.method != "GET" or sent:
            route.continue_()
            return
        before = route.fetch()  # the conversation without the message
        conversation_id = int(urlsplit(route.request.url).path.rsplit("/", 1)[1])
        sent.append(api_send(web, alice, conversation_id, "Hello while you load"))
        time.sleep(1.5)  # the message's event reaches the page meanwhile
        route.fulfill(response=before)

    bob_page.route("**/v1/conversations/*", answer_after_the_message)
    r = requests.post(
        web.url + "/v1/conversations",
        headers=alice.headers,
        json={"kind": "direct", "user_id": bob.id},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    item = tid(bob_page, "conversation-item").filter(has_text="Alice")
    expect(item.get_by_test_id("unread-badge")).to_be_visible()
    expect(item).to_contain_text("Hello while you load")
    assert sent == [201]


# ---- second release: people search, requests, blocks, mute, archive, settings ----


def api_send(web: Server, user: Account, conversation_id: int, body: str) -> int:
    r = requests.post(
        f"{web.url}/v1/conversations/{conversation_id}/messages",
        headers=user.headers,
        json={"client_msg_id": os.urandom(6).hex(), "body": body},
        timeout=10,
    )
    return r.status_code


def test_people_search_a_request_accepted_and_a_block(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    alice_page, bob_page = open_page(), open_page()
    log_in(alice_page, alice)
    log_in(bob_page, bob)
    # Bob finds Alice by the start of her handle and opens a chat from the result.
    tid(bob_page, "new-direct-handle").fill(alice.handle[:-2])
    result = tid(bob_page, "person-result").filter(has_text=alice.handle)
    expect(result).to_have_count(1)
    screenshot(bob_page, "people-search")
    result.click()
    expect(tid(bob_page, "chat-title")).to_have_text("Alice")
    conversation_id = int(tid(bob_page, "chat").get_attribute("data-conversation-id"))
    send(bob_page, "Hi, we met at the conference")
    expect_message(bob_page, "Hi, we met at the conference", own=True)
    # For Alice it is a message request, with its buttons.
    section = tid(alice_page, "requests-section")
    expect(section).to_be_visible()
    expect(tid(alice_page, "requests-count")).to_have_text("1")
    item = section.get_by_test_id("conversation-item").filter(has_text="Bob")
    expect(item.get_by_test_id("conversation-preview")).to_contain_text("conference")
    screenshot(alice_page, "message-requests")
    # Her browser does not tell Bob it got the message: no "delivered" for a request.
    for _ in range(10):
        conv = requests.get(
            f"{web.url}/v1/conversations/{conversation_id}",
            headers=bob.headers,
            timeout=10,
        ).json()["conversation"]
        mine = next(m for m in conv["members"] if m["user_id"] == alice.id)
        assert mine["delivered_seq"] == 0
        alice_page.wait_for_timeout(100)
    section.get_by_test_id("request-accept").click()
    expect(section).to_be_hidden()
    main = tid(alice_page, "conversation-list").get_by_test_id("conversation-item")
    expect(main.filter(has_text="Bob")).to_have_count(1)
    # Accepted: Bob now sees Alice online.
    presence = requests.get(
        f"{web.url}/v1/presence",
        params={"user_ids": alice.id},
        headers=bob.headers,
        timeout=10,
    ).json()["presence"]
    assert str(alice.id) in presence
    # Alice blocks Bob from the chat: his messages are refused.
    main.filter(has_text="Bob").click()
    tid(alice_page, "block-button").click()
    expect(tid(alice_page, "block-button")).to_have_text("Unblock")
    screenshot(alice_page, "chat-blocked")
    assert api_send(web, bob, conversation_id, "still there?") == 403
    tid(alice_page, "block-button").click()
    expect(tid(alice_page, "block-button")).to_have_text("Block")
    assert api_send(web, bob, conversation_id, "hello again") == 201
    expect_message(alice_page, "hello again", own=False)


def test_requests_can_be_blocked_or_deleted_from_the_list(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice, carol, dave = account("Alice"), account("Carol"), account("Dave")
    alice_page = open_page()
    log_in(alice_page, alice)
    for sender in (carol, dave):
        r = requests.post(
            f"{web.url}/v1/conversations",
            headers=sender.headers,
            json={"kind": "direct", "user_id": alice.id},
            timeout=10,
        )
        assert r.status_code == 201
        assert api_send(web, sender, r.json()["conversation"]["id"], "psst") == 201
    section = tid(alice_page, "requests-section")
    expect(tid(alice_page, "requests-count")).to_have_text("2")
    carol_row = section.locator("li").filter(has_text="Carol")
    carol_row.get_by_test_id("request-block").click()
    expect(section.locator("li").filter(has_text="Carol")).to_have_count(0)
    blocked = requests.get(f"{web.url}/v1/blocks", headers=alice.headers, timeout=10)
    assert [u["id"] for u in blocked.json()["users"]] == [carol.id]
    dave_row = section.locator("li").filter(has_text="Dave")
    dave_row.get_by_test_id("request-delete").click()
    expect(section).to_be_hidden()
    # Deleted requests wait under Archived.
    tid(alice_page, "archived-toggle").click()
    archived = tid(alice_page, "conversation-list").get_by_test_id("conversation-item")
    expect(archived).to_have_count(2)


def test_mute_and_archive_from_the_chat(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    alice_page = open_page()
    log_in(alice_page, alice)
    conversation_id = open_direct(alice_page, bob)
    send(alice_page, "ping")
    expect_message(alice_page, "ping", own=True)
    tid(alice_page, "mute-button").click()
    expect(tid(alice_page, "mute-button")).to_have_text("Unmute")
    conv = requests.get(
        f"{web.url}/v1/conversations/{conversation_id}",
        headers=alice.headers,
        timeout=10,
    ).json()["conversation"]
    assert conv["muted_until"] == "forever"
    tid(alice_page, "archive-button").click()
    expect(tid(alice_page, "archive-button")).to_have_text("Unarchive")
    listed = tid(alice_page, "conversation-list").get_by_test_id("conversation-item")
    expect(listed.filter(has_text="Bob")).to_have_count(0)
    screenshot(alice_page, "chat-muted-archived")
    # Bob writes: the conversation comes back to the list.
    assert api_send(web, bob, conversation_id, "pong") == 201
    expect(listed.filter(has_text="Bob")).to_have_count(1)
    expect(tid(alice_page, "archive-button")).to_have_text("Archive")
    tid(alice_page, "mute-button").click()
    expect(tid(alice_page, "mute-button")).to_have_text("Mute")


def test_settings_profile_password_and_sessions(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice = account("Alice")
    page = open_page()
    log_in(page, alice)
    tid(page, "settings-button").click()
    expect(tid(page, "settings-view")).to_be_visible()
    # Two sessions besides this browser's: the account's API one, and a phone.
    r = requests.post(
        f"{web.url}/v1/sessions",
        json={"handle": alice.handle, "password": PASSWORD},
        headers={"User-Agent": "PhoneApp/3.1"},
        timeout=10,
    )
    phone = {"Authorization": f"Bearer {r.json()['token']}"}
    tid(page, "settings-close").click()
    tid(page, "settings-button").click()
    sessions = tid(page, "session-item")
    expect(sessions).to_have_count(3)
    expect(sessions.filter(has_text="This browser")).to_have_count(1)
    tid(page, "profile-display-name").fill("Alice Liddell")
    tid(page, "profile-save").click()
    expect(tid(page, "profile-message")).to_have_text("Saved.")
    expect(tid(page, "me-name")).to_contain_text("Alice Liddell")
    screenshot(page, "settings")
    # Revoke the phone: refused at once.
    sessions.filter(has_text="PhoneApp/3.1").get_by_test_id("session-revoke").click()
    expect(sessions).to_have_count(2)
    me = requests.get(f"{web.url}/v1/users/me", headers=phone, timeout=10)
    assert me.status_code == 401
    # A wrong current password is said; the right one logs the others out.
    tid(page, "password-current").fill("not my password")
    tid(page, "password-new").fill("a new password")
    tid(page, "password-save").click()
    expect(tid(page, "password-message")).to_have_text("The current password is wrong.")
    tid(page, "password-current").fill(PASSWORD)
    tid(page, "password-new").fill("a new password")
    tid(page, "password-save").click()
    expect(tid(page, "password-message")).to_contain_text("Password changed")
    expect(sessions).to_have_count(1)
    me = requests.get(f"{web.url}/v1/users/me", headers=alice.headers, timeout=10)
    assert me.status_code == 401
    # This browser's session still works.
    tid(page, "settings-close").click()
    wait_live(page)


# ---- message actions and attachments (issue 15) ---------------------------------


def _pair_in_chat(
    open_page: Any, account: Any
) -> tuple[Any, Any, Account, Account, int]:
    """Alice and Bob logged in, both in their direct chat."""
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    alice_page, bob_page = open_page(), open_page()
    log_in(alice_page, alice)
    log_in(bob_page, bob)
    conversation_id = open_direct(alice_page, bob)
    send(alice_page, "hello")
    item = tid(bob_page, "conversation-item").filter(has_text="Alice")
    expect(item).to_be_visible()
    item.click()
    expect_message(bob_page, "hello", own=False)
    return alice_page, bob_page, alice, bob, conversation_id


def _open_menu_by_keyboard(page: Any, found: Any) -> Any:
    """Focus a message's menu button and open the menu with Enter."""
    from playwright.sync_api import expect

    button = found.get_by_test_id("message-menu-button")
    button.focus()
    page.keyboard.press("Enter")
    expect(button).to_have_attribute("aria-expanded", "true")
    menu = found.get_by_test_id("message-menu")
    expect(menu).to_be_visible()
    return menu


def test_reply_shows_a_quote_that_jumps_to_the_message(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice_page, bob_page, alice, bob, cid = _pair_in_chat(open_page, account)
    send(alice_page, "Where shall we meet?")
    for i in range(25):  # enough to scroll the question out of view
        send(alice_page, f"filler {i}")
    expect_message(bob_page, "filler 24", own=False)
    question = message(bob_page, "Where shall we meet?")
    menu = _open_menu_by_keyboard(bob_page, question)
    # Reply has the focus when the menu opens.
    expect(menu.get_by_test_id("menu-reply")).to_be_focused()
    bob_page.keyboard.press("Enter")
    expect(menu).to_have_count(0)
    banner = tid(bob_page, "composer-reply")
    expect(banner).to_contain_text("Replying to Alice: Where shall we meet?")
    expect(tid(bob_page, "message-input")).to_be_focused()
    send(bob_page, "At the station")
    expect(banner).to_be_hidden()
    for page in (alice_page, bob_page):
        reply = message(page, "At the station")
        expect(reply).to_have_count(1)
        quote = reply.get_by_test_id("reply-quote")
        expect(quote).to_contain_text("Where shall we meet?")
    screenshot(alice_page, "reply")
    quote = message(alice_page, "At the station").get_by_test_id("reply-quote")
    quote.click()
    target = message(alice_page, "Where shall we meet?")
    expect(target).to_have_attribute("data-highlighted", "true")
    expect(target).to_be_in_viewport()
    seq = int(target.get_attribute("data-seq"))
    last = history(web, bob, cid)[-1]
    assert (last["body"], last["reply_to"]) == ("At the station", seq)


def test_edit_and_delete_from_the_keyboard_menu(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice_page, bob_page, alice, bob, cid = _pair_in_chat(open_page, account)
    send(alice_page, "See you at 5")
    mine = expect_message(alice_page, "See you at 5", own=True)
    expect_message(bob_page, "See you at 5", own=False)
    # Bob's menu on Alice's message has no Edit or Delete.
    theirs = _open_menu_by_keyboard(bob_page, message(bob_page, "See you at 5"))
    expect(theirs.get_by_test_id("menu-edit")).to_have_count(0)
    expect(theirs.get_by_test_id("menu-delete")).to_have_count(0)
    bob_page.keyboard.press("Escape")
    expect(theirs).to_have_count(0)
    expect(
        message(bob_page, "See you at 5").get_by_test_id("message-menu-button")
    ).to_be_focused()

    menu = _open_menu_by_keyboard(alice_page, mine)
    alice_page.keyboard.press("ArrowDown")  # Reply → Edit
    expect(menu.get_by_test_id("menu-edit")).to_be_focused()
    alice_page.keyboard.press("Enter")
    expect(tid(alice_page, "composer-edit")).to_be_visible()
    expect(tid(alice_page, "message-input")).to_have_value("See you at 5")
    tid(alice_page, "message-input").fill("See you at 6")
    tid(alice_page, "message-input").press("Enter")
    for page in (alice_page, bob_page):
        edited = message(page, "See you at 6")
        expect(edited).to_have_count(1)
        expect(edited.get_by_test_id("message-edited")).to_have_text("edited")
        expect(message(page, "See you at 5")).to_have_count(0)
    expect(tid(alice_page, "message")).to_have_count(2)
    screenshot(bob_page, "edited")

    menu = _open_menu_by_keyboard(alice_page, message(alice_page, "See you at 6"))
    alice_page.keyboard.press("ArrowDown")
    alice_page.keyboard.press("ArrowDown")  # Reply → Edit → Delete
    delete = menu.get_by_test_id("menu-delete")
    expect(delete).to_be_focused()
    alice_page.keyboard.press("Enter")  # asks first
    expect(delete).to_have_text("Delete for everyone?")
    alice_page.keyboard.press("Enter")
    for page in (alice_page, bob_page):
        tombstone = tid(page, "message").filter(
            has=page.get_by_test_id("message-deleted")
        )
        expect(tombstone).to_have_count(1)
        expect(tombstone).to_have_attribute("data-deleted", "true")
        expect(tombstone.get_by_test_id("message-deleted")).to_have_text(
            "Message deleted"
        )
        expect(tombstone.get_by_test_id("message-menu-button")).to_have_count(0)
    screenshot(bob_page, "deleted")
    item = tid(bob_page, "conversation-item").filter(has_text="Alice")
    expect(item.get_by_test_id("conversation-preview")).to_contain_text(
        "Message deleted"
    )
    last = history(web, bob, cid)[-1]
    assert last["deleted"] is True and last["body"] == ""


def test_reactions_picker_and_counts(open_page: Any, account: Any, web: Server) -> None:
    from playwright.sync_api import expect

    alice_page, bob_page, alice, bob, cid = _pair_in_chat(open_page, account)
    menu = _open_menu_by_keyboard(bob_page, message(bob_page, "hello"))
    menu.locator('[data-emoji="👍"]').click()
    for page in (alice_page, bob_page):
        chip = message(page, "hello").get_by_test_id("reaction-chip")
        expect(chip).to_have_count(1)
        expect(chip).to_have_attribute("data-emoji", "👍")
        expect(chip).to_have_attribute("data-count", "1")
    bob_chip = message(bob_page, "hello").get_by_test_id("reaction-chip")
    expect(bob_chip).to_have_attribute("aria-pressed", "true")
    # Alice adds hers by clicking the chip: two; then a different one from the picker.
    alice_chip = message(alice_page, "hello").get_by_test_id("reaction-chip")
    expect(alice_chip).to_have_attribute("aria-pressed", "false")
    alice_chip.click()
    expect(message(bob_page, "hello").locator('[data-emoji="👍"]')).to_have_attribute(
        "data-count", "2"
    )
    menu = _open_menu_by_keyboard(alice_page, message(alice_page, "hello"))
    menu.locator('[data-emoji="😂"]').click()
    chips = message(bob_page, "hello").get_by_test_id("reaction-chip")
    expect(chips).to_have_count(2)
    expect(message(bob_page, "hello").locator('[data-emoji="😂"]')).to_have_attribute(
        "data-count", "1"
    )
    screenshot(bob_page, "reactions")
    # Bob takes his back: only Alice's remains.
    message(bob_page, "hello").locator('[data-emoji="👍"]').click()
    expect(message(alice_page, "hello").get_by_test_id("reaction-chip")).to_have_count(
        1
    )
    first = history(web, alice, cid)[0]
    assert first["reactions"] == {"😂": [alice.id]}


def _png(width: int, height: int, color: str) -> bytes:
    from tests.conftest import png_bytes

    return png_bytes(width, height, color)


def test_attach_by_button_with_a_progress_bar_and_inline_thumbnails(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice_page, bob_page, alice, bob, cid = _pair_in_chat(open_page, account)
    # A slow uplink (about 1 MB/s) so the progress bar is seen moving.
    cdp = alice_page.context.new_cdp_session(alice_page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 20,
            "downloadThroughput": -1,
            "uploadThroughput": 1024 * 1024,
        },
    )
    big = os.urandom(3 * 1024 * 1024)
    tid(alice_page, "file-input").set_input_files(
        [
            {
                "name": "sunset.png",
                "mimeType": "image/png",
                "buffer": _png(900, 600, "orange"),
            },
            {
                "name": "notes.bin",
                "mimeType": "application/octet-stream",
                "buffer": big,
            },
        ]
    )
    progress = tid(alice_page, "upload-progress")
    expect(progress.first).to_be_visible()
    alice_page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=upload-progress]')]"
        ".some((p) => p.value > 0 && p.value < p.max)",
        timeout=UI_TIMEOUT_MS,
    )
    screenshot(alice_page, "upload-progress")
    # A file removed while it uploads is cancelled and leaves the tray.
    tid(alice_page, "file-input").set_input_files(
        [{"name": "oops.bin", "mimeType": "application/octet-stream", "buffer": big}]
    )
    oops = tid(alice_page, "upload-item").filter(has_text="oops.bin")
    expect(oops).to_have_attribute("data-state", "uploading")
    oops.get_by_test_id("upload-remove").click()
    expect(oops).to_have_count(0)
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": -1,
        },
    )
    uploads = tid(alice_page, "upload-item")
    expect(uploads).to_have_count(2)
    for i in range(2):
        expect(uploads.nth(i)).to_have_attribute("data-state", "done", timeout=30_000)
    send(alice_page, "Photos from the trip")
    expect(tid(alice_page, "upload-tray")).to_be_hidden()
    for page in (alice_page, bob_page):
        found = message(page, "Photos from the trip")
        expect(found).to_have_count(1)
        image = found.get_by_test_id("attachment-image")
        expect(image).to_have_attribute("src", str_re("^blob:"))
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        assert image.evaluate("(img) => img.naturalWidth") <= 320
        expect(found.get_by_test_id("attachment-file")).to_contain_text("notes.bin")
    screenshot(bob_page, "attachments")
    # The thumbnail opens the full image.
    message(bob_page, "Photos from the trip").get_by_test_id("attachment-image").click()
    lightbox = tid(bob_page, "lightbox")
    expect(lightbox).to_be_visible()
    full = tid(bob_page, "lightbox-image")
    expect(full).to_have_attribute("src", str_re("^blob:"))
    bob_page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 900", arg=full.element_handle()
    )
    screenshot(bob_page, "lightbox")
    bob_page.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()
    # The file chip downloads the bytes as they were sent.
    with bob_page.expect_download() as download_info:
        message(bob_page, "Photos from the trip").get_by_test_id(
            "attachment-file"
        ).click()
    download = download_info.value
    assert download.suggested_filename == "notes.bin"
    assert Path(download.path()).read_bytes() == big
    sent = history(web, bob, cid)[-1]
    assert [a["filename"] for a in sent["attachments"]] == ["sunset.png", "notes.bin"]


def test_attach_by_drag_and_drop_and_paste_and_send_without_text(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice_page, bob_page, alice, bob, cid = _pair_in_chat(open_page, account)
    alice_page.evaluate(
        """() => {
            const file = (text, name) => {
                const data = new DataTransfer();
                data.items.add(new File([text], name, {type: "text/plain"}));
                return data;
            };
            const how = {bubbles: true, cancelable: true};
            const dropped = file("dropped text", "dropped.txt");
            const chat = document.getElementById("chat");
            for (const type of ["dragover", "drop"]) {
                const event = new DragEvent(type, {...how, dataTransfer: dropped});
                chat.dispatchEvent(event);
            }
            const pasted = file("pasted text", "pasted.txt");
            document.getElementById("message-input").dispatchEvent(
                new ClipboardEvent("paste", {...how, clipboardData: pasted}));
        }"""
    )
    uploads = tid(alice_page, "upload-item")
    expect(uploads).to_have_count(2)
    for i in range(2):
        expect(uploads.nth(i)).to_have_attribute("data-state", "done")
    tid(alice_page, "message-input").press("Enter")  # no text: the files alone
    for page in (alice_page, bob_page):
        chips = tid(page, "attachment-file")
        expect(chips).to_have_count(2)
        expect(chips.nth(0)).to_contain_text("dropped.txt")
        expect(chips.nth(1)).to_contain_text("pasted.txt")
    item = tid(bob_page, "conversation-item").filter(has_text="Alice")
    expect(item.get_by_test_id("conversation-preview")).to_contain_text("2 files")
    last = history(web, bob, cid)[-1]
    assert last["body"] == "" and len(last["attachments"]) == 2


def test_a_quote_of_a_message_beyond_the_first_page_loads_it_on_click(
    open_page: Any, account: Any, web: Server
) -> None:
    from playwright.sync_api import expect

    alice, bob = account("Alice"), account("Bob")
    r = requests.post(
        f"{web.url}/v1/conversations",
        headers=alice.headers,
        json={"kind": "direct", "user_id": bob.id},
        timeout=10,
    )
    cid = r.json()["conversation"]["id"]
    url = f"{web.url}/v1/conversations/{cid}/messages"
    bodies = ["the ancient question"] + [f"chatter {i}" for i in range(60)]
    for i, body in enumerate(bodies):
        sent = requests.post(
            url,
            headers=alice.headers,
            json={"client_msg_id": f"m{i}", "body": body},
            timeout=10,
        )
        assert sent.status_code == 201
    reply = requests.post(
        url,
        headers=bob.headers,
        json={"client_msg_id": "r", "body": "the late answer", "reply_to": 1},
        timeout=10,
    )
    assert reply.status_code == 201
    page = open_page()
    log_in(page, bob)
    tid(page, "conversation-item").filter(has_text="Alice").click()
    answer = message(page, "the late answer")
    expect(answer).to_have_count(1)
    quote = answer.get_by_test_id("reply-quote")
    expect(quote).to_have_attribute("data-reply-to", "1")
    expect(message(page, "the ancient question")).to_have_count(0)  # not loaded yet
    quote.click()
    target = message(page, "the ancient question")
    expect(target).to_have_attribute("data-highlighted", "true")
    expect(target).to_be_in_viewport()
    # The quote now names what it quotes.
    expect(
        message(page, "the late answer").get_by_test_id("reply-quote")
    ).to_contain_text("the ancient question")
