"""Screenshots of the demo's HTML report for the README (docs/report-*.png).

    python docs/make_screenshots.py [--report out/demo/report.html] [--prefix report-]
        [--only layers,profile]

Without ``--report`` it runs ``onnxopt demo`` into a temporary folder first. It needs Chromium
(``apt-get install -y chromium``) and websocket-client (the ``dev`` extra); the browser is the
tests' own harness (tests/e2e/browser.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.browser import Browser, find_chromium  # noqa: E402

#: shot -> the elements it shows (their union's bounding box); written as <prefix><shot>.png
SHOTS = {
    "pipeline": ["header", "#pipeline"],
    "layers": ["#layers"],
    "profile": ["#profile"],
    "tradeoff-graph": ["#tradeoff", "#graph"],
    "tradeoff": ["#tradeoff"],  # the README's: a quantize report with a --metric budget
}

BOX = """JSON.stringify((() => {
  const els = %s.map(s => document.querySelector(s)).filter(e => e);
  if (!els.length) return null;
  const rs = els.map(e => e.getBoundingClientRect());
  const x = Math.min(...rs.map(r => r.left)), y = Math.min(...rs.map(r => r.top)) + scrollY;
  return {x: 0, y: Math.max(0, y - 8), width: document.documentElement.scrollWidth,
          height: Math.max(...rs.map(r => r.bottom)) + scrollY - y + 16};
})())"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="an HTML report (default: run the demo)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--max-height", type=int, default=1400, help="crop each shot to this height")
    ap.add_argument("--prefix", default="report-", help="file names: <prefix><shot>.png")
    ap.add_argument("--only", default=",".join(SHOTS), help=f"shots among {', '.join(SHOTS)}")
    args = ap.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    report = args.report
    if report is None:
        tmp = Path(tempfile.mkdtemp(prefix="onnxopt_demo_"))
        subprocess.run([sys.executable, "-m", "onnxopt", "demo", "--out", str(tmp)], check=True)
        report = tmp / "report.html"
    with Browser(chromium, width=1400, height=1000) as b:
        b.open(report)
        for shot in args.only.split(","):
            name, selectors = f"{args.prefix}{shot}.png", SHOTS[shot]
            box = json.loads(b.evaluate(BOX % json.dumps(selectors)))
            if box is None:
                print(f"{name}: nothing to show ({', '.join(selectors)} not on the page)")
                continue
            box["height"] = min(box["height"], args.max_height)
            (args.out / name).write_bytes(b.screenshot(box))
            print(f"wrote {args.out / name} ({box['width']:.0f}x{box['height']:.0f})")
        if b.errors():
            print(f"JavaScript errors: {b.errors()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
