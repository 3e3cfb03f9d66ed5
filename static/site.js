// milebatch management site: small progressive enhancements only; every
// page works without this file.
"use strict";

// Upload page: send the file with XMLHttpRequest to show its progress in
// the <progress> bar, then show the server's answer (the result page, or
// the form with an error) in place. Without this script the form posts as
// usual and the browser shows the same pages.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-upload]");
  if (!form || !window.XMLHttpRequest || !window.FormData || !window.DOMParser) {
    return;
  }
  var bar = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var button = form.querySelector("button[type=submit]");
  var max = Number(form.getAttribute("data-max-bytes"));

  function show(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    document.title = doc.title;
    document.body.replaceWith(document.adoptNode(doc.body));
  }

  form.addEventListener("submit", function (ev) {
    var input = form.querySelector("input[type=file]");
    var file = input.files && input.files[0];
    ev.preventDefault();
    if (file && max && file.size > max) {
      status.textContent = "ファイルが大きすぎます（" + Math.round(max / 1048576) +
        " MiB まで）。ファイルを分けてアップロードしてください。";
      return;
    }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf]").value);
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "送信しています…";
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable && e.total > 0) {
        bar.max = e.total;
        bar.value = e.loaded;
        status.textContent = "送信しています… " + Math.floor(e.loaded * 100 / e.total) + "%";
      }
    };
    xhr.upload.onload = function () {
      bar.removeAttribute("value"); // indeterminate while the server works
      status.textContent = "送信しました。サーバーで検証・積算しています。このままお待ちください…";
    };
    xhr.onload = function () {
      show(xhr.responseText);
    };
    xhr.onerror = function () {
      button.disabled = false;
      bar.hidden = true;
      status.textContent = "結果を受け取れませんでした（接続が切れました）。ファイル一覧で結果を確かめ、必要ならもう一度アップロードしてください（同じ内容が二重に積算されることはありません）。";
    };
    xhr.send(new FormData(form));
  });
});
