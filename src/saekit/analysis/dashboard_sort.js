document.querySelectorAll('table.index th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var desc = th.dataset.desc !== '1'; th.dataset.desc = desc ? '1' : '0';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === undefined) { x = a.cells[col].textContent; y = b.cells[col].textContent;
        return desc ? y.localeCompare(x) : x.localeCompare(y); }
      return desc ? y - x : x - y;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
