// Shows a given dashboard state in Debian's headless Chromium, hovers (showTip) every data item of
// every chart, and prints as JSON what the tooltips said and any element they made out of the data:
// names (experts, skills, model keys) come from API callers, so they must show as text, never as HTML.
// Usage: node tooltips.mjs <dashboard url> <state json path>
import { printCanned } from "./canned.mjs";

const [url, statePath] = process.argv.slice(2);

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

await printCanned(url, statePath, hoverEverything);
