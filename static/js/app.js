// Small page helpers shared by every page (charts: charts.js). htmx is loaded before this file.
document.addEventListener("htmx:responseError", function (event) {
  var target = event.detail.target;
  if (target) {
    var p = document.createElement("p");
    p.className = "message message-error";
    p.setAttribute("role", "alert");
    // The server may say why in plain words (an expired session: "reload the page and try again").
    p.textContent = event.detail.xhr.getResponseHeader("X-Error-Message") ||
      "The server could not complete that request (" + event.detail.xhr.status + "). Please try again.";
    target.prepend(p);
  }
});
