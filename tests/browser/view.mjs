// Shows a given dashboard state in Debian's headless Chromium and prints as JSON what the page made
// of it: the residency chart's lanes (their labels, and each segment's lane), the note naming unavailable
// workers, the header's stats and the Learning note.
// Usage: node view.mjs <dashboard url> <state json path>
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, statePath] = process.argv.slice(2);
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run"];

function shown() {  // runs in the page: `charts` is dashboard.js's own map of ECharts instances
  const timeline = charts.timeline.getOption();
  const note = document.getElementById("timeline-note");
  return {
    lanes: timeline.yAxis[0].data,
    segmentLanes: timeline.series[0].data.map((d) => d.value[0]),  // in the state's order of segments
    unavailable: note && { visible: note.checkVisibility(), text: note.textContent, title: note.title },
    stats: Object.fromEntries([...document.querySelectorAll("#stats .stat")].map((s) =>
      [s.dataset.stat, s.querySelector("b").textContent])),
    learning: document.getElementById("learning-note").textContent,
  };
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ARGS });
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1300 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const state = readFileSync(statePath, "utf8");
  await page.route("**/dashboard/api/state*", (r) => r.fulfill({ contentType: "application/json", body: state }));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  console.log(JSON.stringify({ ...(await page.evaluate(shown)), errors }));
} finally {
  await browser.close();
}
