"""
A real headless Chromium for page tests: Debian's ``chromium`` driven through
its ``chromium-driver`` by Selenium (no Selenium Manager, no downloads), with an
empty profile and every background network feature off.  Screenshots go to
``artifacts/`` in the checkout (gitignored).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .tools import find, require

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,PasswordLeakDetection",
    "--metrics-recording-only",
    "--window-size=1280,1100",
]


def start_chromium(testcase: Any) -> Any:
    """A fresh headless Chromium with an empty profile; quit at the test's cleanup."""
    require("chromium", "chromedriver")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pns4ones-chromium-")
    testcase.addCleanup(shutil.rmtree, profile, True)
    options = webdriver.ChromeOptions()
    options.binary_location = find("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("unhandledPromptBehavior", "ignore")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=find("chromedriver")))
    testcase.addCleanup(driver.quit)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    return driver


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole current page (not just the viewport) as ``artifacts/admin-panel/<name>.png``."""
    directory = ARTIFACTS / "admin-panel"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png")
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
