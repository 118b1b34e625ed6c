// Live updates: each finished run arrives as a server-sent event; the page then
// re-fetches its own content (server-rendered) and swaps it in, without a reload.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var content = document.getElementById("content");
  var only = document.body.dataset.journey || null;
  var timer = null;
  function stamp(text) { live.textContent = text + " " + new Date().toLocaleTimeString(); }
  function refresh() {
    timer = null;
    var u = new URL(window.location.href);
    u.hash = "";
    u.searchParams.set("fragment", "1");
    fetch(u, { cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) { content.innerHTML = html; stamp("live · updated"); })
      .catch(function () { stamp("live · update failed"); });
  }
  if (!window.EventSource) { live.textContent = "live updates unavailable: reload to refresh"; return; }
  var es = new EventSource("/ui/stream");
  es.addEventListener("run", function (ev) {
    var d;
    try { d = JSON.parse(ev.data); } catch (e) { return; }
    if (only !== null && d.journey !== only) { return; }
    if (timer === null) { timer = setTimeout(refresh, 200); }
  });
  es.onopen = function () { live.classList.add("on"); stamp("live · connected"); };
  es.onerror = function () { live.classList.remove("on"); live.textContent = "live updates reconnecting…"; };
})();
