// edgefleet dashboard: re-fetch this page's live fragment and swap it in, without a reload.
// The server renders everything (tables and SVG charts); this script only polls and swaps.
"use strict";

(function () {
  const main = document.getElementById("live");
  const status = document.getElementById("live-status");
  const period = Number(document.body.dataset.refreshMs) || 2000;
  let last = main ? main.innerHTML : "";
  let failures = 0;
  let refreshes = 0;
  let busy = false;

  function fragmentUrl() {
    const params = new URLSearchParams(window.location.search);
    params.set("fragment", "1");
    return window.location.pathname + "?" + params.toString();
  }

  function stamp() {
    const now = new Date();
    return now.toISOString().substring(11, 19) + " UTC";
  }

  function show(text, tone) {
    if (!status) return;
    status.textContent = text;
    status.className = "live " + tone;
  }

  async function refresh() {
    if (busy || document.hidden || !main) return;
    busy = true;
    try {
      const response = await fetch(fragmentUrl(), { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const html = await response.text();
      if (html !== last) {
        main.innerHTML = html;
        last = html;
      }
      refreshes += 1;
      failures = 0;
      document.body.dataset.refreshes = String(refreshes);
      show("live · " + stamp(), "ok");
    } catch (error) {
      failures += 1;
      show("stale · " + error.message, "bad");
    } finally {
      busy = false;
    }
  }

  function schedule() {
    // Back off while the controller does not answer, up to ten periods.
    const delay = period * Math.min(10, 1 + failures);
    window.setTimeout(async function () {
      await refresh();
      schedule();
    }, delay);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
  show("live", "ok");
  schedule();
})();
