// Shows a given dashboard state in Debian's headless Chromium, hovers (showTip) every data item of
// every chart, and prints as JSON what the tooltips said and any element they made out of the data:
// names (experts, skills, model keys) come from API callers, so they must show as text, never as HTML.
// Usage: node tooltips.mjs <dashboard url> <state json path>
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, statePath] = process.argv.slice(2);
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run"];

function hoverEverything() {  // runs in the page: `charts` is dashboard.js's own map of ECharts instances
  const tips = [], injected = [];
  for (const [id, c] of Object.entries(charts)) {
    const root = document.getElementById(id);
    c.getOption().series.forEach((s, seriesIndex) => s.data.forEach((_, dataIndex) => {
      c.dispatchAction({ type: "showTip", seriesIndex, dataIndex });  // shown at once: showDelay is 0
      const tip = [...root.children].filter((n) => !n.querySelector("svg"));  // the chart's own layer holds the svg
      tips.push(...tip.map((n) => ({ chart: id, text: n.textContent })));
      injected.push(...[...document.querySelectorAll(".xss")].map((n) => `${id}: ${n.outerHTML}`));
    }));
  }
  return { tips, injected };
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ARGS });
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1300 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const state = readFileSync(statePath, "utf8");
  await page.route("**/dashboard/api/state*", (r) => r.fulfill({ contentType: "application/json", body: state }));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  console.log(JSON.stringify({ ...(await page.evaluate(hoverEverything)), errors }));
} finally {
  await browser.close();
}
