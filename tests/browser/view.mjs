// Shows a given dashboard state in Debian's headless Chromium and prints as JSON what the page made
// of it: the residency chart's lanes (their labels, and each segment's lane), the note naming unavailable
// workers, the header's stats and the Learning note.
// Usage: node view.mjs <dashboard url> <state json path>
import { printCanned } from "./canned.mjs";

const [url, statePath] = process.argv.slice(2);

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

await printCanned(url, statePath, shown);
