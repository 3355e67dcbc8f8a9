document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th.sortable').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[idx].dataset.v, y = b.cells[idx].dataset.v;
        if (x === undefined) { x = a.cells[idx].textContent; y = b.cells[idx].textContent;
          return asc ? x.localeCompare(y) : y.localeCompare(x); }
        if (x === '') return 1; if (y === '') return -1;
        return asc ? x - y : y - x;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.length - broken.length;
  document.body.dataset.brokenImages = broken.length;
  document.body.dataset.brokenSrcs = broken.map(function (i) { return i.getAttribute('src'); }).join(' ');
  document.body.dataset.naturalSizes = imgs.map(function (i) {
    return i.naturalWidth + 'x' + i.naturalHeight; }).join(' ');
  document.body.dataset.ready = '1';
});
