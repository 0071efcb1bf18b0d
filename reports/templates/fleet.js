(function () {
  "use strict";
  // Sorting and filtering of the fleet table. Without this script the table lists every model, worst
  // verdict first. State lives in the address fragment (#verdict=backdoored&q=acme&sort=target&dir=ascending),
  // so a filtered view can be bookmarked or sent to a colleague.
  var table = document.getElementById("models");
  if (!table || !table.tBodies.length) { return; }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var query = document.getElementById("filter-text");
  var verdict = document.getElementById("filter-verdict");
  var shown = document.getElementById("shown");
  var total = body.rows.length;
  var state = {sort: table.getAttribute("data-default-sort"), dir: "ascending"};

  Array.prototype.forEach.call(body.rows, function (row, i) { row.setAttribute("data-order", String(i)); });

  function column(name) {
    for (var i = 0; i < heads.length; i++) { if (heads[i].getAttribute("data-name") === name) { return i; } }
    return -1;
  }

  function key(row, col) {
    var cell = row.cells[col];
    var k = cell.getAttribute("data-key");
    return k !== null ? k : cell.textContent.trim().toLowerCase();
  }

  function sort(name, dir) {
    var col = column(name);
    if (col < 0) { return; }
    var numeric = heads[col].getAttribute("data-type") === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      var c = numeric ? Number(x) - Number(y) : (x < y ? -1 : (x > y ? 1 : 0));
      if (dir === "descending") { c = -c; }
      return c !== 0 ? c : Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
    });
    rows.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (th, i) {
      if (i === col) { th.setAttribute("aria-sort", dir); } else { th.removeAttribute("aria-sort"); }
    });
    state.sort = name;
    state.dir = dir;
    table.setAttribute("data-sorted-by", name + " " + dir);
  }

  function filter() {
    var q = query.value.trim().toLowerCase();
    var v = verdict.value;
    var n = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var match = (!v || row.getAttribute("data-verdict") === v) &&
                  (!q || row.textContent.toLowerCase().indexOf(q) >= 0);
      row.hidden = !match;
      if (match) { n++; }
    });
    shown.textContent = n + " of " + total + " models shown";
    table.setAttribute("data-filtered", q || v ? "yes" : "no");
  }

  function remember() {
    var params = new URLSearchParams();
    if (verdict.value) { params.set("verdict", verdict.value); }
    if (query.value.trim()) { params.set("q", query.value.trim()); }
    params.set("sort", state.sort);
    params.set("dir", state.dir);
    try { history.replaceState(null, "", "#" + params.toString()); } catch (e) { /* file: pages may refuse */ }
  }

  heads.forEach(function (th) {
    var name = th.getAttribute("data-name");
    if (!name) { return; }
    th.classList.add("sortable");
    th.tabIndex = 0;
    th.setAttribute("role", "button");
    function click() {
      sort(name, state.sort === name && state.dir === "ascending" ? "descending" : "ascending");
      remember();
    }
    th.addEventListener("click", click);
    th.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); click(); }
    });
  });
  query.addEventListener("input", function () { filter(); remember(); });
  verdict.addEventListener("change", function () { filter(); remember(); });

  var initial = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (initial.get("q")) { query.value = initial.get("q"); }
  var wanted = initial.get("verdict");
  if (wanted && Array.prototype.some.call(verdict.options, function (o) { return o.value === wanted; })) {
    verdict.value = wanted;
  }
  var sortName = initial.get("sort");
  sort(sortName && column(sortName) >= 0 ? sortName : state.sort,
       initial.get("dir") === "descending" ? "descending" : "ascending");
  filter();
  document.getElementById("controls").hidden = false;
  table.classList.add("interactive");
})();
