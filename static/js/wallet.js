// Wallet page: earnings charts drawn from the page's json_script data block (no inline script: see the CSP).
document.addEventListener("DOMContentLoaded", function () {
  var source = document.getElementById("earnings-data");
  if (!source || !window.Chart) return;
  var data = JSON.parse(source.textContent);
  function credits(series) {
    return Object.values(series).map(function (v) { return v / 1e6; });
  }
  function bar(id, series, type) {
    return new Chart(document.getElementById(id), {
      type: type || "bar",
      data: { labels: Object.keys(series), datasets: [{ label: "credits", data: credits(series) }] },
      options: { plugins: { legend: { display: false } } }
    });
  }
  bar("earnings-model", data.by_model);
  bar("earnings-datanet", data.by_datanet);
  bar("earnings-day", data.by_day, "line");
});
