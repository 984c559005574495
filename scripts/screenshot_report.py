#!/usr/bin/env python
"""Screenshot a report.html in headless Chromium, so a person (or a test) can look at it.

    python scripts/screenshot_report.py runs/NAME/report.html out.png [--width 1400 --height 4000]

Chromium runs with networking features off and a throwaway profile: the page must render from
the file alone (a self-contained report has no external reference to fetch).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: Path, png_path: Path, *, width: int = 1400, height: int = 4000,
               timeout_s: float = 120.0) -> Path:
    """Render `html_path` to `png_path` (full window size); raises if Chromium fails."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium found (Debian: apt-get install chromium)")
    png_path = png_path.resolve()
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--screenshot={png_path}", f"--window-size={width},{height}",
               html_path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if not png_path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"error: {args.html} does not exist", file=sys.stderr)
        return 2
    out = screenshot(args.html, args.png, width=args.width, height=args.height)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
