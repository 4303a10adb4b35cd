#!/usr/bin/env python3
"""The operator console's web UI in a real browser: headless Chromium driven by selenium through
chromedriver, logging in with the operator's client certificate (tests/tests/console_browser.rs).

One run is one journey of one operator in one browser session:

    journeys.py JOURNEY --url https://127.0.0.1:PORT --root ROOT.pem --p12 OP.p12
        --p12-passphrase-file PASS --cn OPERATOR --screenshots DIR [journey options]

    approve            --code CODE [--wait-gone S]
                                              find the waiting device by its pairing code on
                                              /approvals and approve it; reload until it is
                                              no longer listed
    viewer-approvals   --code CODE            look at /approvals as a viewer; try to approve
                                              anyway (fetch and a form post): both refused?
    create-credential  --allow RULE... --max-uses N --expires D [--role R]
                                              create an EAB credential; read kid/HMAC/QR
    revoke             --query TEXT --reason R
                                              search /devices, open the device, revoke it on
                                              the confirmation page

It prints one JSON object on stdout, what the pages showed, for the test to assert on; it
asserts nothing about the CA itself. On a failure it prints {"error": ..., "url": ..., "page":
...} and exits 1. Every page visited is saved as DIR/NN-NAME.png (full page).

The browser (see the recipe in the test file's comment): a temporary HOME whose NSS database
($HOME/.pki/nssdb) trusts the CA root and holds the operator's PKCS#12, and a user-data-dir whose
Default/Preferences auto-selects the certificate with subject CN=OPERATOR, because headless
Chromium never shows the certificate dialog: without a matching entry a page load would hang.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Generous: CI machines are loaded; a hang (no certificate auto-selected) fails after this.
PAGE_LOAD_TIMEOUT = 30
WAIT = 30
# Full-page screenshots: the window grows to the page's height, up to this.
MAX_SHOT_HEIGHT = 4000
NAV = ["dashboard", "devices", "approvals", "credentials", "trust-anchors", "operators", "audit"]


class JourneyError(Exception):
    pass


def check(cond, what):
    if not cond:
        raise JourneyError(what)


def run(*cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise JourneyError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")


class Browser:
    """One headless Chromium with the operator's certificate; a page list with screenshots."""

    def __init__(self, args):
        self.base = args.url.rstrip("/")
        self.shots = args.screenshots
        os.makedirs(self.shots, exist_ok=True)
        self.pages = []
        self.keep = os.environ.get("IIOT_KEEP_TEST_DIRS", "0") != "0"
        self.root = tempfile.mkdtemp(prefix="iiot-console-browser-")
        try:
            self.d = self.start(args)
        except BaseException:
            self.remove_profile()
            raise
        self.d.set_page_load_timeout(PAGE_LOAD_TIMEOUT)

    def start(self, args):
        home, udd = f"{self.root}/home", f"{self.root}/udd"
        db = f"sql:{home}/.pki/nssdb"
        os.makedirs(f"{home}/.pki/nssdb")
        os.makedirs(f"{udd}/Default")
        run("certutil", "-N", "-d", db, "--empty-password")
        run("certutil", "-A", "-d", db, "-n", "iiot-acme-root", "-t", "C,,", "-i", args.root)
        run("pk12util", "-i", args.p12, "-d", db, "-w", args.p12_passphrase_file, "-K", "")
        host = urlparse(self.base)
        pattern = f"{host.scheme}://{host.hostname}:*,*"
        with open(f"{udd}/Default/Preferences", "w") as f:
            json.dump({"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {
                pattern: {"setting": {"filters": [{"SUBJECT": {"CN": args.cn}}]}}}}}}}, f)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1280,800", f"--user-data-dir={udd}"]:
            opts.add_argument(a)
        # HOME in chromedriver's environment, which Chromium inherits: where the NSS db is.
        env = dict(os.environ, HOME=home)
        log = os.path.join(self.shots, "chromedriver.log")
        return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env, log_output=log),
                                options=opts)

    def remove_profile(self):
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def close(self):
        try:
            self.d.quit()
        finally:
            self.remove_profile()

    # Pages.

    def get(self, path, name):
        self.d.get(self.base + path)
        return self.loaded(name)

    def loaded(self, name):
        """Records the page now shown, with a screenshot; fails on Chromium's own error pages
        (TLS or connection failures), which are not the console's."""
        WebDriverWait(self.d, WAIT).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        url = self.d.current_url
        shot = self.screenshot(name)
        page = {"name": name, "url": url, "title": self.d.title, "screenshot": shot,
                "whoami": self.text_or_none("#whoami"), "flash": self.text_or_none("#flash"),
                "error": self.text_or_none("#error")}
        self.pages.append(page)
        check(not url.startswith("chrome-error://"),
              f"{name}: the browser shows its own error page, not the console's: "
              f"{self.d.find_element(By.TAG_NAME, 'body').text[:500]}")
        return page

    def screenshot(self, name):
        path = os.path.join(self.shots, f"{len(self.pages) + 1:02d}-{name}.png")
        # The window is taller than its viewport by the browser's own frame.
        height, frame = self.d.execute_script(
            "return [Math.max(document.body ? document.body.scrollHeight : 0, "
            "document.documentElement.scrollHeight), window.outerHeight - window.innerHeight]")
        self.d.set_window_size(1280, min(max(int(height or 0), 700) + int(frame or 0),
                                         MAX_SHOT_HEIGHT))
        self.d.save_screenshot(path)
        return path

    def nav(self, to, name=None):
        """Follows the nav link a#nav-TO, as an operator would."""
        self.click_and_wait(self.one(f"a#nav-{to}"))
        return self.loaded(name or to)

    def click_and_wait(self, element):
        """Clicks a link or submit button and waits until the next page replaced this one: a
        mark left in this page's window object is gone and the new page has loaded. (Waiting
        for an element to go stale races with the navigation: chromedriver may then answer
        "Node with given id does not belong to the document" instead of "stale element".)"""
        self.d.execute_script("window.__journeyOldPage = true;")
        element.click()
        WebDriverWait(self.d, WAIT, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script(
                "return window.__journeyOldPage === undefined"
                " && document.readyState === 'complete'"))

    # Elements.

    def one(self, css, within=None):
        try:
            return (within or self.d).find_element(By.CSS_SELECTOR, css)
        except NoSuchElementException:
            raise JourneyError(f"no {css} on {self.d.current_url}") from None

    def all(self, css, within=None):
        return (within or self.d).find_elements(By.CSS_SELECTOR, css)

    def text_or_none(self, css, within=None):
        found = self.all(css, within)
        return found[0].text.strip() if found else None

    def nav_links(self):
        return {n: bool(self.all(f"a#nav-{n}")) for n in NAV}

    def post_form(self, path, fields):
        """Submits an HTML form built in the page (a real browser form post, same origin, the
        same client certificate) and returns the page it leads to."""
        self.d.execute_script(
            "const [action, fields] = arguments;"
            "const f = document.createElement('form');"
            "f.method = 'post'; f.action = action;"
            "for (const [k, v] of Object.entries(fields)) {"
            "  const i = document.createElement('input');"
            "  i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
            "document.body.appendChild(f); f.submit();",
            path, fields)

    def fetch_post(self, path, fields):
        """POSTs form fields with fetch(): the status and body as the browser got them."""
        return self.d.execute_async_script(
            "const [path, fields, done] = arguments;"
            "fetch(path, {method: 'POST', redirect: 'manual',"
            "  body: new URLSearchParams(fields)})"
            ".then(async r => done({status: r.status, type: r.type, body: await r.text()}))"
            ".catch(e => done({status: -1, body: String(e)}));",
            path, fields)


def approvals(b):
    """The waiting devices on the current /approvals page."""
    out = []
    for a in b.all("article.approval"):
        out.append({
            "id": a.get_attribute("data-id"),
            "pairing_code": b.text_or_none(".pairing-code", a),
            "identifier": b.text_or_none(".identifier", a),
            "source": b.text_or_none(".source", a),
            "approve_buttons": len(b.all("button.approve", a)),
            "reject_buttons": len(b.all("button.reject", a)),
            "forms": len(b.all("form", a)),
        })
    return out


def squash(text):
    return "".join(c for c in (text or "").lower() if c.isalnum())


def norm_code(code):
    return "".join((code or "").split()).upper()


def find_approval(b, code):
    for a in b.all("article.approval"):
        if norm_code(b.text_or_none(".pairing-code", a)) == norm_code(code):
            return a
    raise JourneyError(f"no article.approval with pairing code {code} on {b.d.current_url}; "
                       f"shown: {[x['pairing_code'] for x in approvals(b)]}")


def dashboard(b):
    page = b.get("/", "dashboard")
    b.one("#dashboard")
    counts = {}
    for c in ["valid", "expiring", "stopped", "revoked", "pending"]:
        text = b.one(f"#count-{c}").text.strip()
        check(text.isdigit(), f"#count-{c} is not a number: {text!r}")
        counts[c] = int(text)
    return {"whoami": page["whoami"], "counts": counts, "nav": b.nav_links()}


def open_approvals(b, code):
    """Dashboard, then /approvals by the nav: what they show, and the waiting device's article."""
    out = {"dashboard": dashboard(b)}
    b.nav("approvals")
    out["before"] = approvals(b)
    article = find_approval(b, code)
    out["id"] = article.get_attribute("data-id")
    return out, article


def journey_approve(b, args):
    out, article = open_approvals(b, args.code)
    b.click_and_wait(b.one("button.approve", article))
    page = b.loaded("approved")
    out["flash"] = page["flash"]
    out["error"] = page["error"]
    out["url_after"] = page["url"]
    # The list right after the POST, whatever page it led to.
    if urlparse(page["url"]).path != "/approvals":
        b.get("/approvals", "approvals-after")
    out["after"] = out["after_post"] = approvals(b)
    # The CA applies a decision when the device next asks (or on its timer): until then the
    # request may still be listed. Reload until it is gone, or --wait-gone seconds pass.
    deadline = time.monotonic() + args.wait_gone
    reloads = 0
    while (any(norm_code(a["pairing_code"]) == norm_code(args.code) for a in out["after"])
           and time.monotonic() < deadline):
        time.sleep(0.5)
        b.d.get(b.base + "/approvals")
        reloads += 1
        out["after"] = approvals(b)
    if reloads:
        b.loaded("approvals-reloaded")
    out["reloads"] = reloads
    out["gone_after_s"] = round(time.monotonic() - deadline + args.wait_gone, 2)
    return out


def journey_viewer_approvals(b, args):
    out, _ = open_approvals(b, args.code)
    rid = out["id"]
    out["buttons_on_page"] = len(b.all("button.approve, button.reject"))
    # What an approver's form would post, from the viewer's browser.
    fetched = b.fetch_post(f"/approvals/{rid}", {"decision": "approve", "reason": ""})
    out["fetch"] = {"status": fetched["status"], "type": fetched.get("type"),
                    "body": fetched["body"][:2000]}
    b.post_form(f"/approvals/{rid}", {"decision": "approve", "reason": ""})
    page = b.loaded("approve-refused")
    out["form_post"] = {"url": page["url"], "error": page["error"], "flash": page["flash"]}
    b.get("/approvals", "approvals-after")
    out["after"] = approvals(b)
    return out


def journey_create_credential(b, args):
    out = {"dashboard": dashboard(b)}
    b.nav("credentials")
    form = b.one("form#new-credential")
    b.one("textarea[name=allow]", form).send_keys("\n".join(args.allow))
    for name, value in [("max_uses", args.max_uses), ("expires", args.expires),
                        ("role", args.role)]:
        if value is not None:
            field = b.one(f"input[name={name}]", form)
            field.clear()
            field.send_keys(str(value))
    b.click_and_wait(b.one("button#create-credential", form))
    page = b.loaded("credential-created")
    out["flash"] = page["flash"]
    out["error"] = page["error"]
    secret = b.one("#new-secret")
    out["kid"] = b.one("#kid", secret).text.strip()
    out["hmac"] = b.one("#hmac", secret).text.strip()
    qr = b.all("svg#qr", secret)
    out["qr"] = {"present": bool(qr),
                 "elements": len(b.all("rect, path", qr[0])) if qr else 0,
                 "width": qr[0].size["width"] if qr else 0}
    out["listed_kids"] = [r.get_attribute("data-kid") for r in b.all("tr.credential")]
    return out


def journey_revoke(b, args):
    out = {"dashboard": dashboard(b)}
    b.nav("devices")
    b.get(f"/devices?q={args.query}", "devices-search")
    rows = b.all("tr.device")
    out["rows"] = [r.get_attribute("data-serial") for r in rows]
    check(rows, f"no tr.device for q={args.query}")
    b.click_and_wait(b.one("a.device-link", rows[0]))
    page = b.loaded("device")
    out["device_url"] = page["url"]
    out["serial"] = out["rows"][0]
    out["identifiers"] = b.one("#identifiers").text.strip()
    out["status_before"] = b.one("#status").text.strip()
    b.click_and_wait(b.one("a#revoke"))
    page = b.loaded("revoke-confirm")
    out["confirm_url"] = page["url"]
    select = Select(b.one("select[name=reason]"))
    out["reasons"] = [o.get_attribute("value") for o in select.options]
    if args.reason is not None:
        # By value or label, however spelled: keyCompromise, key_compromise, "Key compromise".
        want = squash(args.reason)
        match = [o for o in select.options
                 if want in (squash(o.get_attribute("value")), squash(o.text))]
        check(match, f"no reason {args.reason!r} among {out['reasons']}")
        select.select_by_value(match[0].get_attribute("value"))
    out["reason"] = select.first_selected_option.get_attribute("value")
    b.click_and_wait(b.one("button#confirm-revoke"))
    page = b.loaded("revoked")
    out["url_after"] = page["url"]
    out["flash"] = page["flash"]
    out["error"] = page["error"]
    out["status_after"] = b.text_or_none("#status")
    # The rest of the console, by its navigation, a screenshot of each page.
    for section in ["trust-anchors", "operators", "audit", "config"]:
        b.nav(section)
        if section == "audit":
            out["audit_rows"] = [r.text for r in b.all("tr.audit-entry")]
    out["config_text"] = b.text_or_none("#config")
    return out


JOURNEYS = {
    "approve": journey_approve,
    "viewer-approvals": journey_viewer_approvals,
    "create-credential": journey_create_credential,
    "revoke": journey_revoke,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("journey", choices=sorted(JOURNEYS))
    p.add_argument("--url", required=True, help="the console, https://127.0.0.1:PORT")
    p.add_argument("--root", required=True, help="PEM of the CA root the console chains to")
    p.add_argument("--p12", required=True, help="the operator's PKCS#12 file")
    p.add_argument("--p12-passphrase-file", required=True)
    p.add_argument("--cn", required=True, help="subject CN of the operator's certificate")
    p.add_argument("--screenshots", required=True, help="directory for NN-page.png")
    p.add_argument("--code", help="pairing code of the waiting device")
    p.add_argument("--wait-gone", type=float, default=0,
                   help="approve: reload /approvals up to this many seconds until it is gone")
    p.add_argument("--allow", action="append", default=[], help="allow-list rule, repeatable")
    p.add_argument("--max-uses")
    p.add_argument("--expires")
    p.add_argument("--role")
    p.add_argument("--query", help="device search text")
    p.add_argument("--reason", help="revocation reason: the <option> value")
    args = p.parse_args()

    start = time.monotonic()
    b = None
    result = {"journey": args.journey, "operator": args.cn}
    try:
        b = Browser(args)
        result["browser_start_s"] = round(time.monotonic() - start, 2)
        result.update(JOURNEYS[args.journey](b, args))
        code = 0
    except (JourneyError, WebDriverException, AssertionError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        code = 1
        if b is not None:
            try:
                result["url"] = b.d.current_url
                result["page"] = b.d.page_source[:4000]
                b.screenshot("failure")
            except WebDriverException:
                pass
    finally:
        if b is not None:
            result["pages"] = b.pages
            b.close()
    result["elapsed_s"] = round(time.monotonic() - start, 2)
    print(json.dumps(result))
    sys.exit(code)


if __name__ == "__main__":
    main()
