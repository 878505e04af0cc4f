// Playground: sends the conversation, streams the model's answer (and optionally the base model's) token by token
// from server-sent events, then shows usage, fee and the link to the answer's attribution.
(function () {
  "use strict";
  function ready(fn) { if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn); }
  ready(function () {
    var form = document.getElementById("playground");
    if (!form) return;
    var conversation = document.getElementById("conversation");
    var errorBox = document.getElementById("playground-error");
    var history = [];
    var csrf = (document.querySelector("[name=csrfmiddlewaretoken]") || {}).value ||
      (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";

    function bubble(who, text) {
      var el = document.createElement("article");
      el.className = "turn turn-" + who;
      var head = document.createElement("header");
      head.textContent = who === "user" ? "You" : who === "base" ? "Base model" : "Fine-tuned model";
      var body = document.createElement("div");
      body.className = "turn-text";
      body.textContent = text || "";
      var foot = document.createElement("footer");
      el.append(head, body, foot);
      return el;
    }

    function stream(url, el, onDone) {
      var source = new EventSource(url);
      var text = el.querySelector(".turn-text");
      source.onmessage = function (message) {
        var event = JSON.parse(message.data);
        if (event.type === "delta") text.textContent += event.text;
        else if (event.type === "done" || event.type === "error") {
          source.close();
          if (event.type === "error") el.querySelector("footer").textContent = event.message;
          if (onDone) onDone(event);
        }
      };
      source.onerror = function () { source.close(); };
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var input = form.elements.message;
      var content = input.value.trim();
      errorBox.hidden = true;
      if (!content) { errorBox.textContent = "Type a question first."; errorBox.hidden = false; return; }
      var messages = history.concat([{ role: "user", content: content }]);
      var compare = form.elements.compare.checked;
      fetch(form.dataset.startUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify({ messages: messages, temperature: parseFloat(form.elements.temperature.value),
          max_new_tokens: parseInt(form.elements.max_new_tokens.value, 10), compare: compare })
      }).then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (!res.ok) { errorBox.textContent = res.body.error.message; errorBox.hidden = false; return; }
          input.value = "";
          history = messages;
          conversation.append(bubble("user", content));
          var row = document.createElement("div");
          row.className = compare ? "grid" : "";
          var tuned = bubble("tuned");
          row.append(tuned);
          conversation.append(row);
          stream(res.body.stream_url, tuned, function (event) {
            if (event.type !== "done") return;
            history = history.concat([{ role: "assistant", content: tuned.querySelector(".turn-text").textContent }]);
            fetch(res.body.answer_url, { credentials: "same-origin" }).then(function (r) { return r.text(); })
              .then(function (html) { tuned.querySelector("footer").innerHTML = html; });
          });
          if (res.body.base_stream_url) {
            var base = bubble("base");
            row.append(base);
            stream(res.body.base_stream_url, base, function (event) {
              if (event.type === "done") base.querySelector("footer").textContent = "Base model, free: " + event.completion_tokens + " tokens";
            });
          }
        }).catch(function () { errorBox.textContent = "The server could not be reached. Try again."; errorBox.hidden = false; });
    });
    document.getElementById("playground-clear").addEventListener("click", function () {
      history = []; conversation.textContent = ""; errorBox.hidden = true;
    });
  });
})();
