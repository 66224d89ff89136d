"""Screenshots of every page of the built book in headless Chromium, at desktop and phone width.

Not collected by pytest (a browser is not part of the test environment). Run by hand after
`make book`, with Playwright (``pip install playwright``) and a system Chromium:

    python tests/screenshots.py [--html _build/html] [--out _build/screenshots]

For each page and width it writes a full-page PNG and prints what usually looks broken:
code blocks and outputs that scroll sideways, images shown larger than they were drawn
(blurred) or much smaller (unreadable), and pages wider than the window.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import threading
from pathlib import Path

WIDTHS = {"desktop": 1280, "phone": 390}

PROBE = """() => {
  const out = {pageWidth: document.documentElement.scrollWidth, scrollers: [], images: []};
  for (const el of document.querySelectorAll('article pre, article .output, article table')) {
    if (el.scrollWidth > el.clientWidth + 2) {
      const cell = el.closest('.cell');
      const hidden = cell && cell.classList.contains('tag_hide-input') && el.closest('.cell_input');
      if (!hidden) out.scrollers.push({tag: el.tagName, over: el.scrollWidth - el.clientWidth,
                                       text: (el.innerText || '').slice(0, 60)});
    }
  }
  for (const img of document.querySelectorAll('article img')) {
    if (!img.naturalWidth) continue;
    out.images.push({src: img.src.split('/').pop().slice(0, 40), natural: img.naturalWidth,
                     shown: Math.round(img.getBoundingClientRect().width)});
  }
  return out;
}"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", type=Path, default=Path("_build/html"))
    ap.add_argument("--out", type=Path, default=Path("_build/screenshots"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    pages = sorted(p.relative_to(args.html) for p in args.html.glob("book/*.html"))
    pages = [Path("index.html"), *pages]
    args.out.mkdir(parents=True, exist_ok=True)
    httpd, base = serve(args.html)
    report = {}
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=flags)
            for label, width in WIDTHS.items():
                page = browser.new_page(viewport={"width": width, "height": 900})
                for rel in pages:
                    page.goto(f"{base}/{rel.as_posix()}", wait_until="load")
                    page.wait_for_timeout(300)
                    info = page.evaluate(PROBE)
                    name = f"{rel.stem}_{label}.png"
                    page.screenshot(path=str(args.out / name), full_page=True)
                    exercise = page.locator("div.exercise").first
                    if exercise.count():  # the first exercise and its folded solution, as a reader meets them
                        exercise.scroll_into_view_if_needed()
                        page.screenshot(path=str(args.out / f"{rel.stem}_{label}_exercise.png"))
                    report[name] = info
                    blurred = [i for i in info["images"] if i["shown"] > 1.05 * i["natural"]]
                    print(f"{name}: page {info['pageWidth']} px, {len(info['scrollers'])} sideways "
                          f"scrollers, {len(info['images'])} images ({len(blurred)} upscaled)")
                page.close()
            browser.close()
    finally:
        httpd.shutdown()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
