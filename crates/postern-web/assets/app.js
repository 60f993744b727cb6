// Progressive enhancements: confirmation dialogs, the copy button, menus, auto-submitting filters.
// Every page works for reading without it.
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-open]");
    if (opener) {
      var dialog = document.getElementById(opener.getAttribute("data-open"));
      if (dialog && typeof dialog.showModal === "function") {
        var menu = opener.closest("details.menu");
        if (menu) menu.removeAttribute("open");
        dialog.showModal();
        var confirm = dialog.querySelector("button[type=submit]");
        if (confirm) confirm.focus();
      }
      return;
    }
    var closer = event.target.closest("[data-close]");
    if (closer) {
      var parent = closer.closest("dialog");
      if (parent) parent.close();
      return;
    }
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      var input = document.querySelector(copy.getAttribute("data-copy"));
      if (!input) return;
      var label = copy.querySelector("span");
      var done = function () {
        if (label) label.textContent = "Copied";
        copy.classList.add("copied");
        setTimeout(function () {
          if (label) label.textContent = "Copy";
          copy.classList.remove("copied");
        }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, function () {
          input.select();
          document.execCommand("copy");
          done();
        });
      } else {
        input.select();
        document.execCommand("copy");
        done();
      }
      return;
    }
    // A click outside an open menu closes it.
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      if (!menu.contains(event.target)) menu.removeAttribute("open");
    });
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      menu.removeAttribute("open");
      var summary = menu.querySelector("summary");
      if (summary) summary.focus();
    });
  });

  // Clicking the dialog's backdrop cancels it.
  document.addEventListener("click", function (event) {
    if (event.target.tagName === "DIALOG") event.target.close();
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
  });

  document.addEventListener("focusin", function (event) {
    if (event.target.matches("input.secret")) event.target.select();
  });
})();
