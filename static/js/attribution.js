// Per-model attribution chart: each contributor's summed share of the answers, per day.
(function () {
  function setup() {
    var canvas = document.getElementById("attribution-chart");
    var source = document.getElementById("attribution-chart-data");
    if (!canvas || !source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets: data.datasets },
      options: { responsive: true, scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "answers' worth of share" } } } },
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
