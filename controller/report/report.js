// Ramp report: draws the charts of the embedded data with uPlot (inlined above this script).
// Each chart's container gets data-series (the labels uPlot drew), data-points and data-rendered, and the body
// data-charts-rendered once every chart is drawn: what the browser tests read.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ramp-data").textContent);
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  var groups = {};
  function colour(group) {
    if (!(group in groups)) { groups[group] = palette[Object.keys(groups).length % palette.length]; }
    return groups[group];
  }
  data.versions.forEach(colour);
  var marks = {phase: "#555555", promoted: "#2ca02c", rollback: "#d62728"};
  var shades = {header: "rgba(148, 103, 189, 0.12)", hold: "rgba(230, 190, 0, 0.16)"};

  function seriesOptions(s, chart) {
    var opts = {label: s.label, stroke: colour(s.group || s.label), width: 2, spanGaps: false};
    if (s.kind === "stable") { opts.stroke = "#7f7f7f"; opts.dash = [6, 3]; }
    if (s.kind === "threshold") { opts.stroke = "#b30000"; opts.width = 1.5; opts.dash = [4, 4]; }
    if (s.kind === "limit") { opts.stroke = "#000000"; opts.width = 1.5; opts.dash = [8, 4]; }
    if (chart.stepped) { opts.paths = uPlot.paths.stepped({align: 1}); }
    opts.value = function (u, v) { return v == null ? "-" : (+v.toPrecision(4)) + (chart.unit === "e-value" ? "" : " " + chart.unit); };
    return opts;
  }

  function annotate(u) {
    var ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    ctx.save();
    data.spans.forEach(function (span) {
      var x0 = u.valToPos(span.start, "x", true), x1 = u.valToPos(span.end, "x", true);
      ctx.fillStyle = shades[span.kind] || "rgba(0,0,0,0.05)";
      ctx.fillRect(Math.min(x0, x1), top, Math.max(Math.abs(x1 - x0), 2), height);
    });
    ctx.font = 11 * devicePixelRatio + "px sans-serif";
    data.annotations.forEach(function (mark, i) {
      var x = Math.round(u.valToPos(mark.at, "x", true));
      ctx.strokeStyle = marks[mark.kind] || "#555555";
      ctx.lineWidth = (mark.kind === "phase" ? 1 : 2) * devicePixelRatio;
      ctx.setLineDash(mark.kind === "phase" ? [3 * devicePixelRatio, 3 * devicePixelRatio] : []);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(String(i + 1), x + 3 * devicePixelRatio, top + 12 * devicePixelRatio);
    });
    ctx.restore();
  }

  function elapsed(seconds) {
    var s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h > 0) { return "+" + h + "h" + (m < 10 ? "0" : "") + m + "m"; }
    if (m > 0) { return "+" + m + "m" + (r < 10 ? "0" : "") + r + "s"; }
    return "+" + r + "s";
  }

  function draw(chart, width) {
    var box = document.getElementById(chart.id);
    if (chart.x.length === 0) {
      box.querySelector(".plot").textContent = "no samples in this window";
      box.dataset.series = "[]"; box.dataset.points = "0"; box.dataset.rendered = "empty";
      return null;
    }
    var options = {
      width: width, height: 260,
      scales: {x: {time: false, range: [data.start, data.end]}, y: chart.log ? {distr: 3, range: chart.range} : {}},
      axes: [
        {label: "time since " + data.startText,
         incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400],
         values: function (u, splits) { return splits.map(function (v) { return elapsed(v - data.start); }); }},
        {label: chart.unit, size: 70},
      ],
      series: [{label: "time", value: function (u, v) { return v == null ? "-" : elapsed(v - data.start); }}].concat(chart.series.map(function (s) { return seriesOptions(s, chart); })),
      hooks: {draw: [annotate]},
      legend: {live: true},
    };
    var plot = new uPlot(options, [chart.x].concat(chart.series.map(function (s) { return s.values; })), box.querySelector(".plot"));
    box.dataset.series = JSON.stringify(plot.series.slice(1).map(function (s) { return s.label; }));
    box.dataset.points = String(plot.data[0].length);
    box.dataset.rendered = "true";
    return plot;
  }

  var width = Math.max(480, Math.min(1200, document.body.clientWidth - 40));
  var plots = data.charts.map(function (chart) { return draw(chart, width); }).filter(function (p) { return p; });
  window.rampPlots = plots;
  document.body.dataset.chartsRendered = String(data.charts.length);
})();
