// Small page helpers shared by every page. htmx and Chart.js are loaded before this file.
document.addEventListener("htmx:responseError", function (event) {
  var target = event.detail.target;
  if (target) {
    var p = document.createElement("p");
    p.className = "message message-error";
    p.setAttribute("role", "alert");
    p.textContent = "The server could not complete that request (" + event.detail.xhr.status + "). Please try again.";
    target.prepend(p);
  }
});

// Live loss chart on the job page: initial points from the page, then new points after each htmx poll.
(function () {
  function setup() {
    var canvas = document.getElementById("loss-chart");
    if (!canvas || !window.Chart) return;
    var initial = JSON.parse(document.getElementById("chart-initial").textContent);
    var chart = new Chart(canvas, {
      type: "line",
      data: { datasets: [
        { label: "training loss", data: initial.train, borderColor: "#0172ad", pointRadius: 0, borderWidth: 2 },
        { label: "held-out loss", data: initial.eval, borderColor: "#e8590c", pointRadius: 3, borderWidth: 2 }
      ] },
      options: { animation: false, parsing: false, scales: { x: { type: "linear", title: { display: true, text: "step" } },
                 y: { title: { display: true, text: "loss" } } } }
    });
    var last = initial.last_id;
    canvas.mfChart = chart;
    document.body.addEventListener("htmx:afterSwap", function () {
      fetch(canvas.dataset.url + "?after=" + last, { headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (points) {
          chart.data.datasets[0].data.push.apply(chart.data.datasets[0].data, points.train);
          chart.data.datasets[1].data.push.apply(chart.data.datasets[1].data, points.eval);
          last = points.last_id;
          chart.update();
        });
    });
  }
  document.addEventListener("DOMContentLoaded", setup);
})();
