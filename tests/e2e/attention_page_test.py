#!/usr/bin/env python3
"""The attention page (`xcam attention --html`, docs/attention.md) in headless Chromium, driven
through the DevTools protocol:

  - the page of the zoo BERT (zoo/models/bert) on a bracketed text loads from a file with no
    request beyond itself, no console error and no exception;
  - its DOM holds the WordPiece tokens of the text, in order, in both columns;
  - moving the mouse onto a token (a real mouse event at the token's place) redraws the view:
    the canvas changes, the token is marked, and for the previous-token head (layer 0, head 1,
    alone) the info line names the token before it as the strongest key; on a closing bracket,
    with every head of layer 1 shown, the bracket head (head 2) names its opening partner;
  - the model view has a heat map per layer and head, and hovering a token there redraws it;
  - screenshots of the head view before and after the hover and of the model view are written
    to OUT (attention_page.png is the one in docs/attention.md);
  - a 512-token page (a random-init BertModel with 512 positions, traced here) opens and
    redraws on hover; its load and redraw times are printed (not asserted: timings are
    benchmarks' business).

usage: .venv-hf/bin/python tests/e2e/attention_page_test.py --xcam BUILD/core/xcam --out DIR
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # Debian's python3-websocket (websocket-client)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, "zoo", "models", "bert", "bert_patterns_traced.pt")
TOKENIZER = os.path.join(REPO, "zoo", "models", "tokenizers", "bert", "tokenizer.json")
TEXT = "a b 3 ( c d 7 ) e [ f ] g"
TOKENS = ["[CLS]", "a", "b", "3", "(", "c", "d", "7", ")", "e", "[", "f", "]", "g", "[SEP]"]


class Page:
    """One Chromium tab over the DevTools protocol; events are kept in self.events."""

    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=30)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr, seconds=20):
        end = time.time() + seconds
        while time.time() < end:
            try:
                if self.js(expr):
                    return
            except RuntimeError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}")

    def open(self, path):
        self.call("Page.navigate", url="file://" + path)
        self.wait(f"location.href === {json.dumps('file://' + path)} && window.xcam !== undefined && "
                  "window.xcam.ready === true")

    def hover(self, selector):
        box = self.js(f"(() => {{ const e = document.querySelector('{selector}'); e.scrollIntoView({{block: 'center'}});"
                      f" const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()")
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        time.sleep(0.1)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def problems(self, page_url):
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: " + json.dumps(p.get("args"))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append("log: " + p["entry"].get("text", ""))
            elif m == "Network.requestWillBeSent" and p["request"]["url"] != page_url:
                out.append("request: " + p["request"]["url"])
        return out


def start_chromium(profile):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("attention page test: no chromium on PATH; scripts/setup.sh installs Debian's chromium")
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--window-size=1280,900", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = os.path.join(profile, "DevToolsActivePort")
    for _ in range(400):
        if os.path.exists(port_file) and open(port_file).read().strip():
            break
        time.sleep(0.05)
    port = int(open(port_file).read().split()[0])
    for _ in range(100):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            page = next(t for t in targets if t["type"] == "page")
            return proc, page["webSocketDebuggerUrl"]
        except (OSError, StopIteration):
            time.sleep(0.1)
    raise AssertionError("chromium's DevTools endpoint did not come up")


def long_model(out):
    """A random-init BertModel with 512 positions (the zoo's config otherwise), traced as the zoo's."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "zoo"))
    import bert_model as bm
    cfg = bm.bert_config()
    cfg.max_position_embeddings = 512
    torch.manual_seed(0)
    bert = bm.BertModel(cfg, add_pooling_layer=True).eval()
    ids = torch.randint(5, 100, (1, 32))
    with torch.no_grad():
        traced = torch.jit.trace(bert, (ids, torch.ones_like(ids)), check_trace=False)
    path = os.path.join(out, "bert512_traced.pt")
    traced.save(path)
    return path


def xcam_attention(xcam, model, texts, out):
    cmd = [xcam, "attention", "--model", model, "--tokenizer", TOKENIZER, "--html", "--out", out, "--threads", "2"]
    for t in texts:
        cmd += ["--text", t]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xcam", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="xcam_page_")
    proc = None
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)
    try:
        xcam_attention(a.xcam, MODEL, [TEXT], a.out)
        page_path = os.path.join(a.out, "attention_1.html")
        proc, ws_url = start_chromium(os.path.join(tmp, "profile"))
        page = Page(ws_url)
        for domain in ("Runtime", "Log", "Page", "Network"):
            page.call(domain + ".enable")
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=560, deviceScaleFactor=1, mobile=False)
        page.open(page_path)
        left = page.js("Array.from(document.querySelectorAll('#left .tok')).map(e => e.textContent)")
        right = page.js("Array.from(document.querySelectorAll('#right .tok')).map(e => e.textContent)")
        check(left == TOKENS and right == TOKENS, f"the page's tokens are the text's WordPiece tokens: {left}")
        page.screenshot(os.path.join(a.out, "attention_page_overview.png"))

        # Layer 0, head 1 alone (the previous-token head), through the page's controls.
        page.js("document.getElementById('none').click()")
        page.js("document.querySelector('#heads input[data-h=\"1\"]').click()")
        before = page.js("document.getElementById('lines').toDataURL()")
        redraws = page.js("xcam.redraws")
        k = TOKENS.index("d")
        page.hover(f"#left .tok[data-i=\"{k}\"]")
        after = page.js("document.getElementById('lines').toDataURL()")
        info = page.js("document.getElementById('info').textContent")
        check(after != before and page.js("xcam.redraws") > redraws, "hovering a token redraws the lines")
        check(page.js(f"document.querySelector('#left .tok[data-i=\"{k}\"]').classList.contains('active')"),
              "the hovered token is marked")
        want = f"L0 H1 (previous-token): {TOKENS[k - 1]}@{k - 1} "
        check(info.startswith(f"query 'd'@{k}: ") and want in info, f"previous-token head: {info!r} has {want!r}")
        page.screenshot(os.path.join(a.out, "attention_page_head1.png"))

        # Layer 1, every head: from ')' the bracket head's (head 2) strongest key is '('.
        page.js("const s = document.getElementById('layer'); s.value = '1'; s.dispatchEvent(new Event('change'))")
        page.js("document.getElementById('all').click()")
        k = TOKENS.index(")")
        page.hover(f"#left .tok[data-i=\"{k}\"]")
        info = page.js("document.getElementById('info').textContent")
        want = f"L1 H2 (global): (@{TOKENS.index('(')} "
        check(want in info, f"bracket head: {info!r} has {want!r}")
        page.screenshot(os.path.join(a.out, "attention_page.png"))

        # The model view.
        page.js("document.getElementById('bModel').click()")
        cells = page.js("document.querySelectorAll('#grid .cell canvas:first-child').length")
        check(cells == 2 * 4, f"the model view has a heat map per layer and head ({cells})")
        redraws = page.js("xcam.redraws")
        page.hover(f"#mtoks .tok[data-i=\"{TOKENS.index('f')}\"]")
        check(page.js("xcam.redraws") > redraws, "hovering a token in the model view redraws its rows")
        page.screenshot(os.path.join(a.out, "attention_page_model.png"))
        check(page.js("document.getElementById('errors').textContent") == "", "no script error in the page")
        problems = page.problems("file://" + page_path)
        check(not problems, f"no console errors, warnings or requests: {problems}")

        # 512 tokens.
        long_dir = os.path.join(a.out, "long")
        words = " ".join("abcdefgh"[i % 8] for i in range(510))
        xcam_attention(a.xcam, long_model(tmp), [words], long_dir)
        long_path = os.path.join(long_dir, "attention_1.html")
        page.events.clear()
        t0 = time.time()
        page.open(long_path)
        load_s = time.time() - t0
        n = page.js("document.querySelectorAll('#left .tok').length")
        check(n == 512, f"the long page has 512 tokens ({n})")
        page.hover("#left .tok[data-i=\"300\"]")
        hover_ms = page.js("xcam.drawMs")
        page.js("document.getElementById('bModel').click()")
        t1 = time.time()
        page.wait("document.querySelectorAll('#grid .cell').length === 8")
        model_s = time.time() - t1
        check(not page.problems("file://" + long_path), "no console errors on the long page")
        size_mb = os.path.getsize(long_path) / 1e6
        print(f"512 tokens, 2 layers x 4 heads: page {size_mb:.1f} MB, opened in {load_s:.2f} s, a hover redraws "
              f"in {hover_ms:.1f} ms (all 4 heads), the model view built in {model_s:.2f} s")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        sys.exit(f"{len(failures)} check(s) failed")
    print("attention page: all checks passed")


if __name__ == "__main__":
    main()
