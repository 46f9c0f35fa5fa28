// Opens the dashboard in Debian's headless Chromium with its state API answering 503 as a starting
// service does, and prints as JSON what the page's status line says once it has asked.
// Usage: node starting.mjs <dashboard url> <503 body json>
import { chromium } from "playwright-core";

const [url, body] = process.argv.slice(2);
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run"];

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ARGS });
try {
  const page = await browser.newPage();
  let asked = 0;
  await page.route("**/dashboard/api/state*", (r) => {
    asked += 1;
    return r.fulfill({ status: 503, contentType: "application/json", body });
  });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => document.getElementById("updated").textContent !== "connecting…", null,
    { timeout: 30000 });
  console.log(JSON.stringify({ updated: await page.textContent("#updated"), asked }));
} finally {
  await browser.close();
}
