"""Opens a run's page in headless chromium and checks it as a user would, over the DevTools
protocol: real mouse events, the page's own handlers.

    python scripts/browser_test.py RUN_DIR [SCREENSHOT.png]

An attention run (attention.html): the page loads with no console errors or exceptions; the
head selector has n_layers x n_heads cells; clicking a head draws its pattern (a canvas for that
head whose pixel below the diagonal has the colour of the weight); hovering a matrix cell and a
token shows values equal to patterns.parquet.

A dashboards run (dashboard.html): no console errors; the unit list has one entry per row of
units.parquet; clicking a unit shows it, with one histogram bar per bin holding
histograms.parquet's counts, its strongest logit effect from logit_effects.parquet, and its top
examples in order, the hovered example token showing top_examples.parquet's activation. An SAE
run (with similar.parquet) lists each feature's nearest features as similar.parquet has them,
and clicking one on the page shows it.

Exits non-zero, saying what failed, otherwise.
"""
import base64
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import polars as pl
import websocket


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no chromium on PATH: apt install chromium")


class Page:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
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

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def mouse(self, kind, x, y, modifiers=0):
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                  clickCount=1 if kind != "mouseMoved" else 0, modifiers=modifiers)

    def click(self, x, y):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def errors(self):
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(str(p.get("args")))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text"))
        return out


def inside(start, size, i, n):
    """A whole pixel inside cell i of n along an axis (the protocol's coordinates are integers)."""
    a = start + i * size / n
    return math.ceil(a) if math.ceil(a) < a + size / n else a


def center(page, selector):
    """Scrolls the element into view, as a user would, and returns its centre."""
    sel = json.dumps(selector)
    return page.eval(f"(() => {{ const e = document.querySelector({sel}); e.scrollIntoView({{block: 'center'}}); "
                     f"const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")


def check_dashboard(page, run, failures):
    units = pl.read_parquet(run / "units.parquet")
    page.call("Page.navigate", url=(run / "dashboard.html").as_uri())
    for _ in range(100):
        if page.eval("document.readyState") == "complete" and page.eval("!!document.querySelector('#unit-title')"):
            break
        time.sleep(0.1)
    n = page.eval("document.querySelectorAll('#list div').length")
    if n != units.height:
        failures.append(f"the unit list has {n} entries, units.parquet {units.height}")
    # Click the unit with the smallest max (last in the default order).
    unit = units.sort("max").row(0, named=True)["unit"]
    page.click(*center(page, f'#list div[data-unit="{unit}"]'))
    shown = page.eval("document.getElementById('unit').dataset.unit")
    if shown != str(unit):
        failures.append(f"clicking unit {unit} shows unit {shown}")
    hist = pl.read_parquet(run / "histograms.parquet").filter(pl.col("unit") == unit).sort("bin")["count"].to_list()
    bars = page.eval("[...document.querySelectorAll('#hist rect.bar')].map(r => +r.dataset.count)")
    if bars != hist:
        failures.append(f"unit {unit}: histogram bars {bars[:5]}... not histograms.parquet's {hist[:5]}...")
    if (run / "logit_effects.parquet").exists():
        le = pl.read_parquet(run / "logit_effects.parquet").filter((pl.col("unit") == unit) & (pl.col("direction") == "raises") & (pl.col("rank") == 0)).row(0, named=True)
        first = page.eval("document.querySelector('table.logits tr:nth-child(2) td').textContent")
        if first != json.dumps(le["token"], ensure_ascii=False):
            failures.append(f"unit {unit}: first raised token {first!r}, logit_effects.parquet says {le['token']!r}")
    ex = pl.read_parquet(run / "top_examples.parquet").filter((pl.col("unit") == unit) & pl.col("is_example")).sort("rank")
    lines = page.eval("document.querySelectorAll('.ex').length")
    if lines != ex.height:
        failures.append(f"unit {unit}: {lines} example lines, top_examples.parquet has {ex.height}")
    top = ex.row(0, named=True)
    page.mouse("mouseMoved", *center(page, '.ex[data-rank="0"] span.peak'))
    shown = page.eval("document.getElementById('info').dataset.value")
    if shown is None or abs(float(shown) - top["activation"]) > 1e-6 * max(1, abs(top["activation"])):
        failures.append(f"hovering unit {unit}'s top example shows {shown!r}, top_examples.parquet says {top['activation']}")
    said = f"{n} units, unit {unit}: {len(bars)} bins and {lines} examples equal the parquet tables"
    if (run / "similar.parquet").exists():
        near = pl.read_parquet(run / "similar.parquet").filter(pl.col("feature") == unit).sort("rank")["other"].to_list()
        listed = page.eval("[...document.querySelectorAll('#similar td[data-feature]')].map(td => +td.dataset.feature)")
        if listed != near:
            failures.append(f"feature {unit}: similar features {listed}, similar.parquet says {near}")
        linked = page.eval("[...document.querySelectorAll('#similar td a')].map(a => +a.textContent)")
        if linked:
            page.click(*center(page, f'#similar td[data-feature="{linked[0]}"] a'))
            shown = page.eval("document.getElementById('unit').dataset.unit")
            if shown != str(linked[0]):
                failures.append(f"clicking similar feature {linked[0]} shows {shown}")
        said += f"; {len(listed)} similar features as similar.parquet, {len(linked)} linked"
    return said


def main():
    run = Path(sys.argv[1]).resolve()
    shot = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    manifest = json.loads((run / "manifest.json").read_text())
    cfg = manifest["model"]["config"]
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    dashboard = (run / "dashboard.html").exists()
    df = None if dashboard else pl.read_parquet(run / "patterns.parquet")
    profile = tempfile.mkdtemp()
    port = 9400 + os.getpid() % 500
    proc = subprocess.Popen(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
         f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failures = []
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("chromium did not start")
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        if dashboard:
            summary = check_dashboard(page, run, failures)
            failures += [f"console: {e}" for e in page.errors()]
            if shot:
                shot.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
            return finish(failures, summary)
        page.call("Page.navigate", url=(run / "attention.html").as_uri())
        for _ in range(100):
            if page.eval("document.readyState") == "complete" and page.eval("!!document.querySelector('canvas.matrix')"):
                break
            time.sleep(0.1)

        cells = page.eval("document.querySelectorAll('#grid .cell').length")
        if cells != n_layers * n_heads:
            failures.append(f"the head grid has {cells} cells, not {n_layers} x {n_heads}")

        # Click the last head the page holds (not the one it opens on).
        layer, head = df.select("layer", "head").unique(maintain_order=True).rows()[-1]
        key = f"{layer}.{head}"
        box = center(page, f'[data-key="{key}"]')
        page.click(*box)
        shown = page.eval("[...document.querySelectorAll('canvas.matrix')].map(c => c.dataset.key)")
        if shown != [key]:
            failures.append(f"clicking L{layer}H{head} shows {shown}")
        n = page.eval("document.querySelector('canvas.matrix').width")
        rows = df.filter((pl.col("layer") == layer) & (pl.col("head") == head))
        # The strongest weight of the last query: its pixel has the weight's colour.
        q, k, w = rows.filter(pl.col("query") == n - 1).sort("weight", descending=True).select("query", "key", "weight").row(0)
        pixel = page.eval(f"[...document.querySelector('canvas.matrix').getContext('2d').getImageData({k}, {q}, 1, 1).data]")
        want = [round(255 - 222 * w), round(255 - 153 * w), round(255 - 83 * w), 255]
        if any(abs(a - b) > 1 for a, b in zip(pixel, want)):
            failures.append(f"pixel ({q}, {k}) is {pixel}, the weight {w:.4f} should be {want}")

        # Hover that matrix cell: the info line shows the parquet's weight.
        rect = page.eval("(() => { const c = document.querySelector('canvas.matrix'); c.scrollIntoView({block: 'center'}); const r = c.getBoundingClientRect(); return [r.x + c.clientLeft, r.y + c.clientTop, c.clientWidth, c.clientHeight]; })()")
        # The first whole pixel inside the cell (the protocol's mouse coordinates are integers).
        x, y = inside(rect[0], rect[2], k, n), inside(rect[1], rect[3], q, n)
        page.mouse("mouseMoved", x, y)
        shown = page.eval("document.getElementById('info').dataset.value")
        if shown is None or abs(float(shown) - w) > 1e-6:
            failures.append(f"hovering ({q}, {k}) shows {shown!r}, the parquet says {w:.6f}")
        text = page.eval("document.getElementById('info').textContent")

        # Hover a token of the text: the strongest weight of its row.
        t = n // 2
        tq = rows.filter(pl.col("query") == t)
        best = tq.filter(pl.col("weight") == tq["weight"].max()).sort("key").row(0, named=True)
        tbox = center(page, f'#tokens span[data-i="{t}"]')
        page.mouse("mouseMoved", *tbox)
        shown = page.eval("document.getElementById('info').dataset.value")
        if shown is None or abs(float(shown) - best["weight"]) > 1e-6:
            failures.append(f"hovering token {t} shows {shown!r}, the parquet's strongest weight is {best['weight']:.6f}")

        # Shift-click a second head: both patterns side by side.
        other = df.select("layer", "head").unique(maintain_order=True).rows()[0]
        okey = f"{other[0]}.{other[1]}"
        box = center(page, f'[data-key="{okey}"]')
        page.mouse("mouseMoved", *box)
        page.mouse("mousePressed", *box, modifiers=8)
        page.mouse("mouseReleased", *box, modifiers=8)
        shown = page.eval("[...document.querySelectorAll('canvas.matrix')].map(c => c.dataset.key)")
        if sorted(shown) != sorted({key, okey}):
            failures.append(f"shift-clicking L{other[0]}H{other[1]} shows {shown}")
        rect = page.eval("(() => { const c = document.querySelector('canvas.matrix'); c.scrollIntoView({block: 'center'}); const r = c.getBoundingClientRect(); return [r.x + c.clientLeft, r.y + c.clientTop, c.clientWidth, c.clientHeight]; })()")
        page.mouse("mouseMoved", inside(rect[0], rect[2], k, n), inside(rect[1], rect[3], q, n))
        if shot:
            data = page.call("Page.captureScreenshot", format="png")["data"]
            shot.write_bytes(base64.b64decode(data))
        failures += [f"console: {e}" for e in page.errors()]
        print(f"hover text: {text}")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    finish(failures, f"{n_layers * n_heads} cells, {n} tokens, values equal patterns.parquet")


def finish(failures, summary):
    if failures:
        print("\n".join(["FAILED:"] + failures))
        sys.exit(1)
    print(f"browser test passed: {summary}")


if __name__ == "__main__":
    main()
