document.getElementById('search').addEventListener('input', function(e){
  var q = e.target.value.toLowerCase();
  document.querySelectorAll('table.index tbody tr').forEach(function(r){
    var cell = r.querySelector('td.expl');
    r.style.display = !q || (cell && cell.textContent.toLowerCase().indexOf(q) >= 0) ? '' : 'none';
  });
});
