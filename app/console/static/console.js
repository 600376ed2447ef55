// Postroom console: the live preview of a template being edited. The preview is a plain form post
// into a sandboxed frame (it works without JavaScript, with its button); this only presses that
// button, 400 ms after the last keystroke.
(function () {
  "use strict";
  function preview(form) {
    var button = form.querySelector("[data-preview]");
    if (button) { form.requestSubmit(button); }
  }
  document.addEventListener("input", function (event) {
    var form = event.target.closest("form[data-live-preview]");
    if (!form) { return; }
    clearTimeout(form.previewTimer);
    form.previewTimer = setTimeout(function () { preview(form); }, 400);
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-live-preview]").forEach(preview);
  });
})();
