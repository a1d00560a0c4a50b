"""The web console at /ui in headless Chromium against a real `baton serve` with auth on, on
PostgreSQL, with sagas and two-phase commits in every state; and once over TLS."""

from __future__ import annotations

import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from conftest import (
    CLIENT, OPERATOR, Server, Shop, chrome, close, saga, severe, shot, two_phase, until,
    use_token,
)

PWN_SCRIPT = "<script>window.pwned=1</script>"
PWN_IMG = "<img src=x onerror=window.pwned=1>"


@pytest.fixture(scope="module")
def txs(server: Server, shop: Shop) -> Dict[str, str]:
    """A transaction in each state the console shows, by name."""
    shop.release.clear()
    status, reply = server.call("POST", "/v1/participants", body={
        "service": "shop", "endpoint": shop.endpoint, "weight": 3, "zone": "zone-a", "ttl_ms": 600000})
    assert status == 200, reply
    ids = {
        "committed": server.start(saga(shop, ["ok", "flaky", "ok"], {"suite": "console"})),
        "compensated": server.start(saga(shop, ["ok", "refuse"], {"suite": "console"})),
        "failed": server.start(saga(shop, ["stuck", "refuse"], {"suite": "console"})),
        "running": server.start(saga(shop, ["ok", "hang"], {"suite": "console"})),
        "tpc_committed": server.start(two_phase(shop, ["yes", "yes"], {"suite": "console"})),
        "tpc_aborted": server.start(two_phase(shop, ["yes", "no"], {"suite": "console"})),
        "escape": server.start(saga(shop, ["ok"], {"a": PWN_SCRIPT, "b": PWN_IMG})),
        "client_failed": server.start(saga(shop, ["stuck", "refuse"]), token=CLIENT),
    }
    for name, state in [("committed", "committed"), ("compensated", "compensated"),
                        ("failed", "failed"), ("tpc_committed", "committed"),
                        ("tpc_aborted", "aborted"), ("escape", "committed"),
                        ("client_failed", "failed")]:
        server.settle(ids[name], (state,))
    until("the hanging step runs", lambda: server.get(ids["running"])["branches"][1]["state"] != "pending"
          and server.get(ids["running"])["state"] == "running")
    return ids


def rows(driver: Any, table: str) -> List[Any]:
    return driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")


def login(driver: Any, server: Server, token: str = OPERATOR) -> None:
    use_token(driver, server.base, token)
    # The first page ran without a token: its 401 is expected; forget it once it has happened.
    until("the token form", lambda: driver.find_element(By.ID, "login").is_displayed())
    severe(driver)


def test_the_console_asks_for_a_token_and_sends_it_as_a_bearer_header(
    server: Server, browser: Any, txs: Dict[str, str]
) -> None:
    browser.get(server.base + "/ui/transactions")
    form = until("the token form", lambda: browser.find_element(By.ID, "login").is_displayed()
                 and browser.find_element(By.ID, "login"))
    browser.find_element(By.ID, "token").send_keys(OPERATOR)
    form.find_element(By.CSS_SELECTOR, "button").click()
    until("rows", lambda: len(rows(browser, "txs")) >= len(txs))
    assert not browser.find_element(By.ID, "login").is_displayed()
    # No cookie: the token lives in this tab's sessionStorage only.
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return sessionStorage.getItem('baton.console.token')") == OPERATOR


def test_every_page_loads_without_console_errors(
    server: Server, browser: Any, txs: Dict[str, str]
) -> None:
    login(browser, server)
    pages = [
        ("overview", "/ui", lambda: browser.find_element(By.CSS_SELECTOR, "#fig-inflight b").text
         and browser.find_elements(By.CSS_SELECTOR, "#chart-finished rect")),
        ("transactions", "/ui/transactions", lambda: len(rows(browser, "txs")) >= len(txs)),
        ("transaction", f"/ui/transactions/{txs['committed']}",
         lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.attempt")),
        ("two-phase", f"/ui/transactions/{txs['tpc_aborted']}",
         lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg .decision")),
        ("participants", "/ui/participants", lambda: rows(browser, "participants")),
        ("coordinators", "/ui/coordinators", lambda: rows(browser, "coordinators")),
    ]
    for name, path, loaded in pages:
        browser.get(server.base + path)
        until(f"{name} loads", loaded)
        assert not browser.find_element(By.ID, "error").is_displayed(), name
        shot(browser, name)
        assert severe(browser) == [], name
    coordinator = rows(browser, "coordinators")[0].find_elements(By.TAG_NAME, "td")
    assert coordinator[0].text == "console"


def test_filters_and_paging(server: Server, shop: Shop, browser: Any, txs: Dict[str, str]) -> None:
    paged = [server.start(saga(shop, ["ok"], {"batch": "paging"})) for _ in range(25)]
    for tx_id in paged:
        server.settle(tx_id, ("committed",))
    login(browser, server)

    browser.get(server.base + "/ui/transactions?state=failed")
    until("failed rows", lambda: {r.get_attribute("data-id") for r in rows(browser, "txs")}
          == {txs["failed"], txs["client_failed"]})

    browser.get(server.base + "/ui/transactions?kind=two_phase&size=200")
    until("two-phase rows", lambda: {r.get_attribute("data-id") for r in rows(browser, "txs")}
          == {txs["tpc_committed"], txs["tpc_aborted"]})

    browser.get(server.base + f"/ui/transactions?id={txs['compensated'][:30]}&size=200")
    until("the id-prefix row", lambda: [r.get_attribute("data-id") for r in rows(browser, "txs")]
          == [txs["compensated"]])

    # The form: a label filter, 20 a page; two pages of the 25.
    browser.get(server.base + "/ui/transactions")
    form = browser.find_element(By.ID, "filters")
    form.find_element(By.NAME, "label").send_keys("batch=paging")
    Select(form.find_element(By.NAME, "size")).select_by_visible_text("20")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until("the first page", lambda: len(rows(browser, "txs")) == 20
          and "label=batch" in browser.current_url)
    first = [r.get_attribute("data-id") for r in rows(browser, "txs")]
    browser.find_element(By.ID, "next").click()
    until("the second page", lambda: len(rows(browser, "txs")) == 5)
    second = [r.get_attribute("data-id") for r in rows(browser, "txs")]
    assert set(first) | set(second) == set(paged) and not set(first) & set(second)
    assert browser.find_element(By.ID, "next").get_attribute("disabled") is not None
    browser.find_element(By.ID, "prev").click()
    until("back to the first page", lambda: [r.get_attribute("data-id") for r in rows(browser, "txs")]
          == first)

    # A time range before anything existed shows nothing.
    browser.get(server.base + "/ui/transactions?to=2001-01-01T00:00:00")
    until("an empty page", lambda: browser.find_element(By.ID, "pageno").text == "page 1"
          and len(rows(browser, "txs")) == 0)
    assert severe(browser) == []


def calls_of(events: List[Dict[str, Any]], branch: int) -> int:
    """The participant calls the log records for `branch`: each ended call has an `_ok`,
    `_error` or `_failed` event (its `_sent` event may be compacted away); a call still out has
    only its `_sent`."""
    ends: Dict[str, int] = {}
    sent: Dict[str, int] = {}
    for e in events:
        if e["branch"] != branch or "_" not in e["kind"]:
            continue
        phase, outcome = e["kind"].split("_", 1)
        if outcome in ("ok", "error", "failed"):
            ends[phase] = ends.get(phase, 0) + 1
        elif outcome == "sent":
            sent[phase] = sent.get(phase, 0) + 1
    return sum(ends.values()) + sum(max(0, n - ends.get(p, 0)) for p, n in sent.items())


def attempts_in_svg(browser: Any, lane: int) -> int:
    return browser.execute_script(
        "const h = 28, top = 22;"
        "return [...document.querySelectorAll('#timeline-svg rect.attempt')]"
        ".filter(r => Math.floor((Number(r.getAttribute('y')) - 5 - top) / h) === arguments[0]).length",
        lane,
    )


def test_the_timeline_has_a_lane_per_branch_and_a_bar_per_attempt(
    server: Server, browser: Any, txs: Dict[str, str]
) -> None:
    login(browser, server)
    for name in ("committed", "compensated", "tpc_aborted"):
        tx = server.get(txs[name])
        events = server.events(txs[name])
        browser.get(server.base + f"/ui/transactions/{txs[name]}")
        until(f"{name} timeline", lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg"))
        lanes = browser.find_elements(By.CSS_SELECTOR, "#timeline-svg g.lane")
        assert len(lanes) == len(tx["branches"]), name
        for b in tx["branches"]:
            calls = calls_of(events, b["index"])
            assert calls > 0 and attempts_in_svg(browser, b["index"]) == calls, (name, b["name"])
        assert len(rows(browser, "events")) == len(events)
    # The flaky step of the committed saga was called twice: one failed bar, one good one.
    browser.get(server.base + f"/ui/transactions/{txs['committed']}")
    until("its timeline", lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg"))
    assert attempts_in_svg(browser, 1) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "rect.attempt.outcome-error")) == 1
    # The aborted 2PC shows its decision point.
    browser.get(server.base + f"/ui/transactions/{txs['tpc_aborted']}")
    decision = until("the decision", lambda: browser.find_element(By.CSS_SELECTOR, "#timeline-svg .decision"))
    assert "abort decided" in decision.text
    assert severe(browser) == []


def click_and_confirm(browser: Any, button: str) -> None:
    until(f"{button} enabled", lambda: browser.find_element(By.ID, button).is_enabled())
    browser.find_element(By.ID, button).click()
    alert = until("the confirmation", lambda: browser.switch_to.alert)
    assert "transaction" in alert.text
    alert.accept()


def test_an_operator_retries_a_failed_saga_and_cancels_a_running_one(
    server: Server, shop: Shop, browser: Any, txs: Dict[str, str]
) -> None:
    login(browser, server)
    browser.get(server.base + f"/ui/transactions/{txs['failed']}")
    until("the failed state", lambda: browser.find_element(By.ID, "tx-state").text == "failed")
    click_and_confirm(browser, "retry")
    until("retry accepted", lambda: "accepted" in browser.find_element(By.ID, "operate-result").text)
    # The page follows the transaction live to its outcome.
    until("compensated on the page", lambda: browser.find_element(By.ID, "tx-state").text == "compensated")
    assert server.get(txs["failed"])["state"] == "compensated"

    browser.get(server.base + f"/ui/transactions/{txs['running']}")
    until("the running state", lambda: browser.find_element(By.ID, "tx-state").text == "running")
    click_and_confirm(browser, "cancel")
    try:
        until("cancel accepted", lambda: "accepted" in browser.find_element(By.ID, "operate-result").text)
    except AssertionError:
        raise AssertionError(browser.find_element(By.ID, "operate-result").text + str(browser.get_log("browser")))
    shop.release.set()
    until("compensated on the page", lambda: browser.find_element(By.ID, "tx-state").text == "compensated")
    assert any(e["kind"] == "cancel_requested" for e in server.events(txs["running"]))
    assert severe(browser) == []


def test_a_client_token_sees_only_its_namespace_and_cannot_operate(
    server: Server, browser: Any, txs: Dict[str, str]
) -> None:
    login(browser, server, CLIENT)
    # Listing needs the operator role, as in the API.
    browser.get(server.base + "/ui/transactions")
    error = until("the refusal", lambda: browser.find_element(By.ID, "error").is_displayed()
                  and browser.find_element(By.ID, "error").text)
    assert "operator" in error
    # Its own transaction: shown (without the operator-only event history), retry refused.
    browser.get(server.base + f"/ui/transactions/{txs['client_failed']}")
    until("its own transaction", lambda: browser.find_element(By.ID, "tx-state").text == "failed")
    click_and_confirm(browser, "retry")
    refused = until("retry refused", lambda: "refused" in (t := browser.find_element(By.ID, "operate-result").text) and t)
    assert "operator" in refused
    assert server.get(txs["client_failed"])["state"] == "failed"
    # Another namespace's transaction is not found, like an unknown id.
    browser.get(server.base + f"/ui/transactions/{txs['running']}")
    error = until("not found", lambda: browser.find_element(By.ID, "error").is_displayed()
                  and browser.find_element(By.ID, "error").text)
    assert "not found" in error
    assert browser.find_element(By.ID, "summary").text == ""


def test_user_supplied_text_is_shown_as_text_never_run(
    server: Server, browser: Any, txs: Dict[str, str]
) -> None:
    login(browser, server)
    browser.get(server.base + "/ui/transactions?size=200")
    cell = until("the label row", lambda: browser.find_element(
        By.CSS_SELECTOR, f"tr[data-id='{txs['escape']}'] td.labels"))
    assert PWN_SCRIPT in cell.text and PWN_IMG in cell.text
    browser.get(server.base + f"/ui/transactions/{txs['escape']}")
    until("the labels", lambda: PWN_SCRIPT in browser.find_element(By.ID, "summary").text)
    # A participant's error text with markup, in the branch table and the event details.
    browser.get(server.base + f"/ui/transactions/{txs['compensated']}")
    until("the error text", lambda: PWN_IMG in browser.find_element(By.ID, "branches").text)
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []


def test_ui_off_serves_no_console(database: str) -> None:
    off = Server(database, ["--ui", "off"])
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(off.base + "/ui", timeout=10)
        assert refused.value.code == 404
        status, _ = off.call("GET", "/v1/coordinators")
        assert status == 200
    finally:
        off.stop()


def test_the_console_over_tls(shop: Shop) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            capture_output=True, stdin=subprocess.DEVNULL,
        ) if Path("/usr/bin/openssl").exists() else None
        if made is None or made.returncode != 0:
            pytest.skip("openssl is not available to make a self-signed certificate")
        tls = Server(f"sqlite://{tmp}/baton.db",
                     ["--tls-cert", str(cert), "--tls-key", str(key)], tls=True)
        driver = chrome(tls=True)
        try:
            assert tls.base.startswith("https://")
            tx_id = tls.start(saga(shop, ["ok"], {"over": "tls"}))
            tls.settle(tx_id, ("committed",))
            login(driver, tls)
            driver.get(tls.base + "/ui/transactions")
            until("rows over https", lambda: [r.get_attribute("data-id") for r in rows(driver, "txs")]
                  == [tx_id])
            driver.get(tls.base + f"/ui/transactions/{tx_id}")
            until("its timeline", lambda: driver.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.attempt"))
            assert driver.current_url.startswith("https://")
            assert severe(driver) == []
        finally:
            close(driver)
            tls.stop()
