// Opens the dashboard in Debian's headless Chromium with its state API answering a given JSON file,
// runs `inPage` in the page once it is drawn, and prints as JSON what that returned, with every page
// error and console error (view.mjs and tooltips.mjs read the page this way).
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run"];

export async function printCanned(url, statePath, inPage) {
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
    console.log(JSON.stringify({ ...(await page.evaluate(inPage)), errors }));
  } finally {
    await browser.close();
  }
}
