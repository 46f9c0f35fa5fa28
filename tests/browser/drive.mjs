// Drives Debian's headless Chromium over the dashboard and prints what it shows as JSON.
// Usage: node drive.mjs <dashboard url> <screenshot path> <min decision rows>
// DASHBOARD_KEY: an API key, given as the browser's HTTP Basic password when the page asks.
import { chromium } from "playwright-core";

const [url, shot, minRows] = process.argv.slice(2);
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run"];

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ARGS });
try {
  const key = process.env.DASHBOARD_KEY;
  const page = await browser.newPage({ viewport: { width: 1440, height: 1300 },
    httpCredentials: key ? { username: "skillroute", password: key } : undefined });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.status()} ${r.url()}`));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  await page.waitForFunction((n) => document.querySelectorAll("#decisions tbody tr[data-query-id]").length >= n,
    Number(minRows), { timeout: 30000 });
  await page.waitForSelector("#heatmap svg text", { timeout: 30000 });
  const shown = await page.evaluate(() => ({
    rows: [...document.querySelectorAll("#decisions tbody tr[data-query-id]")].map((tr) => ({
      id: Number(tr.dataset.queryId), recruited: JSON.parse(tr.dataset.recruited),
      cells: [...tr.querySelectorAll("td")].map((td) => td.innerText.trim()) })),
    heatmap: { experts: JSON.parse(document.querySelector("#heatmap").dataset.experts),
      matched: JSON.parse(document.querySelector("#heatmap").dataset.matched),
      texts: [...document.querySelectorAll("#heatmap svg text")].map((t) => t.textContent) },
    charts: Object.fromEntries(["share", "timeline", "budget", "budget-energy", "learning"].map((id) =>
      [id, document.querySelectorAll(`#${id} svg path, #${id} svg rect`).length])),
    budget: Object.fromEntries(["budget", "budget-energy"].map((id) => [id, {
      series: JSON.parse(document.getElementById(id).dataset.series || "null"),
      texts: [...document.querySelectorAll(`#${id} svg text`)].map((t) => t.textContent) }])),
    polls: Number(document.body.dataset.polls),
  }));
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ ...shown, errors }));
} finally {
  await browser.close();
}
