// dnd report: sort the neuron table by a column, filter its rows by text. Without scripts the table is complete.
"use strict";
(function () {
  const table = document.getElementById("neurons");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const shown = document.getElementById("shown");
  const filter = document.getElementById("filter");
  document.getElementById("filter-box").hidden = false;

  function count() {
    const visible = rows.filter((row) => !row.hidden).length;
    shown.textContent = visible + " of " + rows.length + " neurons";
  }

  filter.addEventListener("input", function () {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const row of rows) {
      const text = row.dataset.search;
      row.hidden = !words.every((word) => text.includes(word));
    }
    count();
  });

  // Numbers sort numerically with blanks last; text sorts by locale.
  function key(row, column, numeric) {
    const value = row.cells[column].dataset.value;
    if (!numeric) return value;
    return value === "" ? NaN : Number(value);
  }

  table.tHead.rows[0].querySelectorAll("th[data-sort]").forEach(function (header) {
    header.tabIndex = 0;
    const sort = function () {
      const column = header.cellIndex;
      const numeric = header.dataset.sort === "number";
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th[aria-sort]").forEach((other) => other.removeAttribute("aria-sort"));
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const sign = ascending ? 1 : -1;
      const sorted = rows.slice().sort(function (a, b) {
        const x = key(a, column, numeric), y = key(b, column, numeric);
        if (numeric) {
          if (Number.isNaN(x)) return Number.isNaN(y) ? 0 : 1;
          if (Number.isNaN(y)) return -1;
          return sign * (x - y);
        }
        return sign * x.localeCompare(y);
      });
      body.append(...sorted);
    };
    header.addEventListener("click", sort);
    header.addEventListener("keydown", (event) => { if (event.key === "Enter") sort(); });
  });
  count();
})();
