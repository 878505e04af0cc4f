// Playground: sends the conversation, streams the model's answer (and optionally the base model's) token by token
// from server-sent events, then shows usage, fee and the link to the answer's attribution. While an answer is being
// written: a "writing" line, Send disabled, and Stop, which ends the answer where the page is: the server is told
// how many pieces the page showed, and the answer recorded and billed is exactly those.
(function () {
  "use strict";
  function ready(fn) { if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn); }
  ready(function () {
    var form = document.getElementById("playground");
    if (!form) return;
    var conversation = document.getElementById("conversation");
    var errorBox = document.getElementById("playground-error");
    var writing = document.getElementById("playground-writing");
    var sendButton = document.getElementById("playground-send");
    var stopButton = document.getElementById("playground-stop");
    var temperature = form.elements.temperature;
    var temperatureValue = document.getElementById("temperature-value");
    var history = [];
    var epoch = 0;  // "New conversation" starts a new one: an answer still ending does not join it
    var running = [];  // the answers still streaming: {source, stop()}
    var csrf = (document.querySelector("[name=csrfmiddlewaretoken]") || {}).value ||
      (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";

    temperature.addEventListener("input", function () { temperatureValue.textContent = temperature.value; });

    function setWriting(on) {
      writing.hidden = !on;
      stopButton.hidden = !on;
      stopButton.disabled = false;
      sendButton.disabled = on;
      sendButton.setAttribute("aria-busy", on ? "true" : "false");
    }

    function finished(job) {
      running = running.filter(function (other) { return other !== job; });
      if (!running.length) setWriting(false);
    }

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

    // Streams one answer into `el`. `stopUrl` (the fine-tuned model's answer): Stop tells the server how many
    // pieces were shown and waits for its `done`; without it (the free base model) Stop just closes the stream.
    function stream(url, el, stopUrl, onDone) {
      var source = new EventSource(url);
      var text = el.querySelector(".turn-text");
      var shown = 0, stopped = false, held = "";
      var job = { source: source };
      function end(event) {
        source.close();
        finished(job);
        if (onDone) onDone(event);
      }
      job.stop = function () {
        if (stopped) return;
        stopped = true;
        if (!stopUrl) { source.close(); finished(job); el.querySelector("footer").textContent = "Stopped."; return; }
        fetch(stopUrl, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
          body: JSON.stringify({ shown: shown })
        }).catch(function () { source.close(); finished(job); });
      };
      source.onmessage = function (message) {
        var event = JSON.parse(message.data);
        if (event.type === "delta") {
          if (stopped) held += event.text;  // written before the stop reached the model: not shown, not billed
          else { text.textContent += event.text; shown += 1; }
        } else if (event.type === "done" || event.type === "error") {
          // The answer had already ended before the stop arrived: it was billed whole, so show it whole.
          if (event.type === "done" && event.finish_reason !== "cancelled") text.textContent += held;
          if (event.type === "error") el.querySelector("footer").textContent = event.message;
          end(event);
        }
      };
      source.onerror = function () {
        source.close();
        finished(job);
        if (!el.querySelector("footer").textContent) {
          el.querySelector("footer").textContent = "The connection to the model was lost. Send your question again.";
        }
      };
      running.push(job);
      return job;
    }

    stopButton.addEventListener("click", function () {
      stopButton.disabled = true;
      running.slice().forEach(function (job) { job.stop(); });
    });

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      if (running.length) return;
      var input = form.elements.message;
      var content = input.value.trim();
      errorBox.hidden = true;
      if (!content) { errorBox.textContent = "Type a question first."; errorBox.hidden = false; return; }
      var messages = history.concat([{ role: "user", content: content }]);
      var compare = form.elements.compare.checked;
      var asked = epoch;
      setWriting(true);
      fetch(form.dataset.startUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify({ messages: messages, temperature: parseFloat(temperature.value),
          max_new_tokens: parseInt(form.elements.max_new_tokens.value, 10), compare: compare })
      }).then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (!res.ok) { setWriting(false); errorBox.textContent = res.body.error.message; errorBox.hidden = false; return; }
          input.value = "";
          history = messages;
          conversation.append(bubble("user", content));
          var row = document.createElement("div");
          row.className = compare ? "grid" : "";
          var tuned = bubble("tuned");
          row.append(tuned);
          conversation.append(row);
          stream(res.body.stream_url, tuned, res.body.stop_url, function (event) {
            if (event.type !== "done" || asked !== epoch) return;
            history = history.concat([{ role: "assistant", content: tuned.querySelector(".turn-text").textContent }]);
            fetch(res.body.answer_url, { credentials: "same-origin" }).then(function (r) { return r.text(); })
              .then(function (html) { tuned.querySelector("footer").innerHTML = html; });
          });
          if (res.body.base_stream_url) {
            var base = bubble("base");
            row.append(base);
            stream(res.body.base_stream_url, base, null, function (event) {
              if (event.type === "done") base.querySelector("footer").textContent = "Base model, free: " + event.completion_tokens + " tokens";
            });
          }
        }).catch(function () {
          setWriting(false);
          errorBox.textContent = "The server could not be reached. Try again."; errorBox.hidden = false;
        });
    });
    document.getElementById("playground-clear").addEventListener("click", function () {
      running.slice().forEach(function (job) { job.stop(); });
      epoch += 1; history = []; conversation.textContent = ""; errorBox.hidden = true;
    });
  });
})();
