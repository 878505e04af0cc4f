// The one chart initialiser. A chart is a <canvas data-chart="KIND" data-chart-data="ID">: KIND names an entry of
// KINDS below, ID the json_script element holding its data (the Content-Security-Policy allows no inline script).
// Charts are drawn when the page loads and in whatever htmx swaps in; one whose canvas htmx took away is destroyed,
// so a canvas is never drawn twice. A canvas with data-chart-url is live: after every htmx swap on the page it
// fetches URL?after=<the data's last_id> and adds the new points in place (the job page's loss chart, whose progress
// section htmx polls). Chart.js and htmx are loaded before this file.
(function () {
  "use strict";

  function credits(series) {
    return Object.values(series).map(function (v) { return v / 1e6; });
  }

  // Earnings start at zero (one day's 1.30 credits is not drawn as a swing between 1.22 and 1.38); a line over the
  // page's whole width is three times as wide as it is tall instead of twice (else 600 px tall at 1280).
  function creditChart(type, aspectRatio) {
    return function (series) {
      return {
        type: type,
        data: { labels: Object.keys(series), datasets: [{ label: "credits", data: credits(series) }] },
        options: { aspectRatio: aspectRatio, plugins: { legend: { display: false } },
                   scales: { y: { beginAtZero: true, title: { display: true, text: "credits" } } } }
      };
    };
  }

  var KINDS = {
    // A fine-tuning job's training and held-out loss per step: {train: [{x, y}], eval: [{x, y}], last_id}.
    loss: {
      config: function (data) {
        return {
          type: "line",
          data: { datasets: [
            { label: "training loss", data: data.train, borderColor: "#0172ad", pointRadius: 0, borderWidth: 2 },
            { label: "held-out loss", data: data.eval, borderColor: "#e8590c", pointRadius: 3, borderWidth: 2 }
          ] },
          options: { animation: false, parsing: false, scales: { x: { type: "linear", ticks: { precision: 0 }, title: { display: true, text: "step" } },
                     y: { title: { display: true, text: "loss" } } } }
        };
      },
      add: function (chart, more) {
        chart.data.datasets[0].data.push.apply(chart.data.datasets[0].data, more.train);
        chart.data.datasets[1].data.push.apply(chart.data.datasets[1].data, more.eval);
      }
    },
    // Several jobs' losses overlaid (compare runs): {datasets: [{label, data: [{x, y}], job: index, kind}]}; one
    // colour per job, training loss as a line, held-out loss dashed with points.
    "loss-compare": {
      config: function (data) {
        var colours = ["#0172ad", "#e8590c", "#2f9e44", "#9c36b5", "#c92a2a", "#495057"];
        return {
          type: "line",
          data: { datasets: data.datasets.map(function (d) {
            var eval_ = d.kind === "eval";
            return { label: d.label, data: d.data, borderColor: colours[d.job % colours.length], borderWidth: 2,
                     pointRadius: eval_ ? 3 : 0, borderDash: eval_ ? [6, 4] : [] };
          }) },
          options: { animation: false, parsing: false, scales: { x: { type: "linear", ticks: { precision: 0 }, title: { display: true, text: "step" } },
                     y: { title: { display: true, text: "loss" } } } }
        };
      }
    },
    // Each contributor's summed share of a model's answers, per day: {labels: [day], datasets: [{label, data}]}.
    "share-per-day": {
      config: function (data) {
        return {
          type: "bar",
          data: { labels: data.labels, datasets: data.datasets },
          options: { responsive: true, scales: { x: { stacked: true },
                     y: { stacked: true, title: { display: true, text: "answers' worth of share" } } } }
        };
      }
    },
    // A datanet's accepted rows per contributor: [{username, rows, share}].
    "rows-per-contributor": {
      config: function (shares) {
        return {
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
        };
      }
    },
    // Earnings in micro-credits by label ({label: micro}), as bars; per day, as a line.
    credits: { config: creditChart("bar", 2) },
    "credits-per-day": { config: creditChart("line", 3) }
  };

  var drawn = [];  // [{chart, kind, last}] for every chart this file drew

  function forget() {
    drawn = drawn.filter(function (entry) {
      if (entry.chart.canvas && entry.chart.canvas.isConnected) return true;
      entry.chart.destroy();
      return false;
    });
  }

  function draw(root) {
    if (!window.Chart || !root.querySelectorAll) return;
    forget();
    var canvases = Array.prototype.slice.call(root.querySelectorAll("canvas[data-chart]"));
    if (root.matches && root.matches("canvas[data-chart]")) canvases.push(root);
    canvases.forEach(function (canvas) {
      var kind = KINDS[canvas.dataset.chart];
      var source = document.getElementById(canvas.dataset.chartData);
      if (!kind || !source || Chart.getChart(canvas)) return;
      var data = JSON.parse(source.textContent);
      drawn.push({ chart: new Chart(canvas, kind.config(data)), kind: kind, last: data.last_id, busy: false });
    });
  }

  function refresh() {
    drawn.forEach(function (entry) {
      var url = entry.chart.canvas && entry.chart.canvas.dataset.chartUrl;
      if (!url || !entry.kind.add || entry.busy || !entry.chart.canvas.isConnected) return;
      entry.busy = true;
      fetch(url + "?after=" + entry.last, { headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (more) {
          entry.kind.add(entry.chart, more);
          entry.last = more.last_id;
          entry.chart.update();
        })
        .finally(function () { entry.busy = false; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:load", function (event) { draw(event.target); });
  document.addEventListener("htmx:afterSwap", refresh);
  document.addEventListener("htmx:afterSettle", forget);
})();
