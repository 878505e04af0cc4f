// Datanet pages: the per-contributor share chart. Data comes from a json_script element (never from HTML).
document.addEventListener("DOMContentLoaded", function () {
  var canvas = document.getElementById("share-chart");
  if (!canvas || typeof Chart === "undefined") return;
  var shares = JSON.parse(document.getElementById(canvas.dataset.source).textContent);
  new Chart(canvas, {
    type: "doughnut",
    data: {
      labels: shares.map(function (s) { return s.username; }),
      datasets: [{ data: shares.map(function (s) { return s.rows; }) }]
    },
    options: {
      plugins: {
        tooltip: { callbacks: { label: function (ctx) {
          var s = shares[ctx.dataIndex];
          return s.username + ": " + s.rows + " rows (" + (s.share * 100).toFixed(1) + "%)";
        } } }
      }
    }
  });
});
