"""Retake the README's pictures from the real UIs of a running stack.

    make demo && make up                # a fine-tune, its champion, and the UIs to show them
    pip install -e '.[docs]'            # Playwright's Python API (it drives a Chromium you have)
    apt-get install chromium            # or any Chromium/Chrome: --chromium PATH
    python docs/screenshots.py          # -> docs/images/*.png

Four pictures: the retrain deployment's Custom run form in the Prefect UI, the artifacts of the
newest fine-tune run, its loss curve, and the registered model in MLflow's UI. The
stack of this loraflow home (LORAFLOW_HOME) is found as every loraflow command finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from loraflow.jobs import DEPLOYMENTS, stack_url
from loraflow.settings import get_settings

IMAGES = Path(__file__).resolve().parent / "images"
# a headless Chromium in a closed network: no background connections, no sandbox as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def targets(family: str) -> dict[str, str]:
    """The three pages, by picture name."""
    settings = get_settings()
    api, mlflow = stack_url(settings, "prefect"), stack_url(settings, "mlflow")
    if not api or not mlflow:
        sys.exit("the stack is not running in this home: `make up` first (and `make demo`)")
    [deployment] = _post(f"{api}/deployments/filter", {
        "deployments": {"name": {"any_": [DEPLOYMENTS["retrain"]]}}, "limit": 1,
    })  # fmt: skip
    runs = _post(f"{api}/flow_runs/filter", {
        "flow_runs": {"name": {"like_": "ft-"}, "state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "START_TIME_DESC", "limit": 1,
    })  # fmt: skip
    curves = _post(f"{api}/artifacts/filter", {
        "artifacts": {"key": {"like_": "loss-curve-"}}, "sort": "CREATED_DESC", "limit": 1,
    })  # fmt: skip
    if not runs or not curves:
        sys.exit("no finished fine-tune in this home's Prefect history: `make demo` first")
    ui = api.removesuffix("/api")
    return {
        "retrain-form": f"{ui}/deployments/deployment/{deployment['id']}/run",
        "fine-tune-run": f"{ui}/runs/flow-run/{runs[0]['id']}",
        "loss-curve": f"{ui}/artifacts/artifact/{curves[0]['id']}",
        "mlflow-registry": f"{mlflow}/#/models/{family}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser to drive")
    parser.add_argument("--family", default="smollm2-135m-instruct.support")
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    pages = targets(args.family)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 960})
        for name, url in pages.items():
            page.goto(url, wait_until="load", timeout=60_000)  # MLflow's UI never goes idle
            page.wait_for_timeout(3000)  # the single-page apps fetch and draw
            if name == "fine-tune-run":  # its artifacts tab, scrolled to the cards
                page.get_by_text("Artifacts", exact=True).first.click()
                page.wait_for_timeout(1000)
                page.mouse.wheel(0, 420)
                page.wait_for_timeout(1000)
            if name == "mlflow-registry":  # MLflow's assistant panel covers the page: closed
                close = page.locator("[aria-label='Close']")
                if close.count():
                    close.last.click()
                    page.wait_for_timeout(1000)
            page.screenshot(path=args.out / f"{name}.png")
            print(f"{args.out / name}.png  <- {url}")
        browser.close()


if __name__ == "__main__":
    main()
