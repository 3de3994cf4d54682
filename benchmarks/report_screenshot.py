"""The README's report screenshot: the top of an HTML report, rendered by headless Chromium.

    onnx-onp sanitize fixtures/models/tiny_badnet_cifar10.onnx --data ../shared/data/cifar10_train.npz \\
        --spec fixtures/models/tiny_badnet_cifar10.json --test-data ../shared/data/cifar10_test.npz \\
        -o sanitized.onnx --html report.html
    python -m benchmarks.report_screenshot report.html [--out docs/report.png] [--height 1400]

Needs the test extra (playwright) and a Chromium (Debian's `chromium`, or ONP_CHROMIUM=/path/to/chrome).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("html", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--height", type=int, default=1400, help="Pixels from the top of the page.")
    args = parser.parse_args(argv)
    executable = os.environ.get("ONP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("error: no Chromium found (apt-get install chromium, or set ONP_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": args.height})
        page.goto(args.html.resolve().as_uri(), wait_until="load")
        page.screenshot(path=str(args.out), clip={"x": 0, "y": 0, "width": 1000, "height": args.height})
        browser.close()
    print(f"wrote {args.out} (top {args.height} px of {args.html})")


if __name__ == "__main__":
    main()
