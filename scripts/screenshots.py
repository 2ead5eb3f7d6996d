"""Regenerate the README's TensorBoard screenshots (docs/*.png) from the repository alone.

    .venv/bin/python scripts/screenshots.py [--logdir DIR] [--out docs]

Runs `backprop-lab all --quick` into a fresh folder (or uses --logdir's runs), opens each view
with `backprop-lab view` (the venv's TensorBoard on 127.0.0.1) and photographs it with headless
Chromium over the DevTools protocol, on 127.0.0.1 only. Needs Debian's `chromium` package and
`websocket-client` (the `screenshots` extra: pip install -e .[screenshots]).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "experiments"]

# The first `n` "Matches (k)" toggle buttons of the custom-scalars page (in shadow DOM), as click
# points: each opens the chart's list of series, manual's and torch's, in their run colours, so two
# runs that draw one line (they coincide) show as two.
OPEN_MATCHES = """(n => {
  const found = [];
  const walk = root => root.querySelectorAll('*').forEach(el => {
    if (el.shadowRoot) walk(el.shadowRoot);
    if (found.length < n && el.classList.contains('toggle-matches-button')) found.push(el);
  });
  walk(document);
  return found.map(el => { const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; });
})(%d)"""

# (file, experiments to open, TensorBoard route, seconds to settle, window size, JS to run then, what it shows)
SHOTS = [
    ("tensorboard_custom_scalars.png", ["xor"], "#custom_scalars", 10, (1500, 1000), OPEN_MATCHES % 3,
     "xor's category: each model's training loss with manual and torch both listed under it, the drift chart beside it"),
    ("tensorboard_images.png", ["circles"], "#images", 10, (1500, 900), None,
     "circles: the decision boundary of the linear model and the MLP, manual and torch"),
    ("tensorboard_hparams.png", [], "#hparams", 25, (1600, 900), None,
     "HParams after one `all`: a row per experiment and implementation, every experiment's settings as columns"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Headless Chromium driven over the DevTools protocol (127.0.0.1 only)."""

    def __init__(self):
        import websocket

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            sys.exit("screenshots: no chromium on PATH (Debian: apt-get install -y chromium)")
        port = free_port()
        self.profile = tempfile.mkdtemp(prefix="chromium-profile.")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
             f"--remote-debugging-port={port}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.close()
            sys.exit("screenshots: chromium did not start")
        try:
            page = next(t for t in tabs if t["type"] == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
            self.n = 0
            self.call("Page.enable")
        except Exception:  # never leave a headless browser behind
            self.close()
            raise

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                return msg.get("result", msg)

    def shoot(self, url, out, wait, size, script=None):
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)
        self.call("Page.navigate", url=url)
        time.sleep(wait)
        if script:  # a real mouse click (Polymer's tap handlers ignore element.click()) on each point found
            points = self.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value") or []
            for x, y in points:
                for kind in ("mousePressed", "mouseReleased"):
                    self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
            print(f"  clicked {len(points)} element(s)")
            time.sleep(3)
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        with open(out, "wb") as f:
            f.write(png)
        print(f"{out}: {len(png)} bytes")

    def close(self):
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


def view(logdir, names):
    """Start `backprop-lab view`; returns (process, URL) once TensorBoard answers."""
    proc = subprocess.Popen(CLI + ["view", *names, "--logdir", logdir], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            sys.exit("screenshots: `backprop-lab view` exited before printing its URL")
        m = re.search(r"TensorBoard: (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)


def sessions(url):
    body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"], "colParams": [], "startIndex": 0,
            "sliceSize": 1000}
    req = urllib.request.Request(url + "data/plugin/hparams/session_groups", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        return json.load(urllib.request.urlopen(req))["totalSize"]
    except OSError:  # HTTP 500 now and then while runs are still loading
        return 0


def wait_loaded(url, n_runs, timeout=600):
    """Until TensorBoard has read every run, HParams sessions included (its loader reads them one
    after another once the server answers; a page opened earlier shows only some)."""
    deadline = time.monotonic() + timeout
    while len(json.load(urllib.request.urlopen(url + "data/runs"))) < n_runs or sessions(url) < n_runs:
        if time.monotonic() > deadline:
            sys.exit(f"screenshots: TensorBoard did not load {n_runs} runs in {timeout} s")
        time.sleep(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logdir", help="use the runs here instead of a fresh `all --quick`")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"), help="where the PNGs go (default: docs/)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tmp = None
    if a.logdir is None:
        tmp = tempfile.mkdtemp(prefix="screenshots.")
        a.logdir = os.path.join(tmp, "runs")
        print("backprop-lab all --quick ...", flush=True)
        subprocess.run(CLI + ["all", "--quick", "--no-progress", "--logdir", a.logdir], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    browser = Chromium()
    try:
        for name, names, route, wait, size, script, what in SHOTS:
            proc, url = view(a.logdir, names)
            try:
                wait_loaded(url, 2 * len(names or os.listdir(a.logdir)))
                browser.shoot(f"{url}?forceSVG=true{route}", os.path.join(a.out, name), wait, size, script)
                print(f"  {what}")
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(20)
    finally:
        browser.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
