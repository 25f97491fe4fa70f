// upkeep console: the only script. It shows upload progress; every page works without it.
"use strict";
// Sizes as the pages write them (`human_size` in mod.rs): "512 bytes", "1.5 MB".
function size(bytes) {
  var units = ["bytes", "KB", "MB", "GB", "TB"];
  var value = bytes;
  var unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? bytes + " bytes" : value.toFixed(1) + " " + units[unit];
}
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form[data-upload]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.XMLHttpRequest || !window.FormData) return;
      event.preventDefault();
      var box = form.querySelector(".upload-progress");
      var bar = box.querySelector("progress");
      var status = box.querySelector(".upload-status");
      var button = form.querySelector("button[type=submit]");
      box.hidden = false;
      button.disabled = true;
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        var percent = Math.floor((e.loaded / e.total) * 100);
        bar.value = percent;
        status.textContent = percent + "% uploaded (" + size(e.loaded) + " of " + size(e.total) + ")";
      });
      xhr.upload.addEventListener("load", function () {
        status.textContent = "Uploaded; the server is checking the file…";
      });
      xhr.addEventListener("load", function () {
        if (xhr.status >= 200 && xhr.status < 300 && xhr.responseURL) {
          window.location.assign(xhr.responseURL);
        } else {
          // The server's error page names the problem: show it.
          document.open();
          document.write(xhr.responseText);
          document.close();
        }
      });
      xhr.addEventListener("error", function () {
        status.textContent = "The upload was interrupted. Check the connection and try again.";
        button.disabled = false;
      });
      xhr.send(new FormData(form));
    });
  });
});
