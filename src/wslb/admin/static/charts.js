// Line charts in plain SVG for the status page: no library, nothing fetched.
// Series names and labels come from the page's fixed lists; values are
// numbers (or null for a gap), written as coordinates, never as markup.
"use strict";

const wslbCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 440;
  const HEIGHT = 150;
  const PAD = { left: 42, right: 42, top: 10, bottom: 22 };
  const MINUTE = 60;

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children);
    return node;
  }

  // An axis' top: the smallest step times a power of ten at or above `value`
  // (counts: whole numbers halfway up too).
  const STEPS = { count: [2, 4, 6, 10], rate: [1, 2, 2.5, 5, 10], seconds: [1, 2, 3, 6, 10] };

  function roundUp(value, format) {
    const steps = STEPS[format];
    if (!(value > 0)) return steps[0];
    const power = 10 ** Math.max(format === "count" ? 0 : -2, Math.floor(Math.log10(value)));
    return steps.map((m) => m * power).find((top) => top >= value);
  }

  function number(value) {
    return Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1).replace(/\.?0+$/, "");
  }

  function seconds(value) {
    if (value < MINUTE) return `${number(value)}s`;
    if (value < 60 * MINUTE) return `${number(Math.round((value / MINUTE) * 10) / 10)}m`;
    return `${number(Math.round((value / 3600) * 10) / 10)}h`;
  }

  const FORMATS = { count: number, rate: (v) => `${number(v)}/s`, seconds };

  // A path through the points, broken where a value is missing (a gap).
  function pathData(points) {
    let d = "";
    let pen = "M";
    for (const [x, y] of points) {
      if (y === null) {
        pen = "M";
        continue;
      }
      d += `${pen}${x.toFixed(1)},${y.toFixed(1)} `;
      pen = "L";
    }
    return d.trim();
  }

  // Draw into `figure`: `series` is [{name, label, axis: "left"|"right", values: [[time, value|null]]}],
  // times in seconds between `from` and `to`; `formats` says how each axis reads.
  function draw(figure, { title, from, to, series, formats = { left: "count", right: "seconds" } }) {
    const plot = { width: WIDTH - PAD.left - PAD.right, height: HEIGHT - PAD.top - PAD.bottom };
    const tops = {};
    for (const axis of ["left", "right"]) {
      const values = series.filter((s) => s.axis === axis).flatMap((s) => s.values.map(([, v]) => v));
      if (values.length) tops[axis] = roundUp(Math.max(0, ...values.filter((v) => v !== null)), formats[axis]);
    }
    const x = (time) => PAD.left + ((time - from) / (to - from)) * plot.width;
    const y = (value, axis) => PAD.top + (1 - value / tops[axis]) * plot.height;

    const grid = [];
    for (const fraction of [0, 0.5, 1]) {
      const at = PAD.top + (1 - fraction) * plot.height;
      grid.push(svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: at, y2: at }));
      for (const [axis, top] of Object.entries(tops)) {
        const left = axis === "left";
        grid.push(svg("text", {
          class: `tick tick-${axis}`, x: left ? PAD.left - 6 : WIDTH - PAD.right + 6, y: at + 4,
          "text-anchor": left ? "end" : "start",
        }, FORMATS[formats[axis]](top * fraction)));
      }
    }
    const span = to - from;
    const step = [10, 30, 60, 120, 300, 600].find((s) => span / s <= 5) ?? 15 * MINUTE;
    for (let ago = Math.floor(span / step) * step; ago >= 0; ago -= step) {
      grid.push(svg("text", { class: "tick tick-time", x: x(to - ago), y: HEIGHT - 6, "text-anchor": "middle" },
        ago ? `-${seconds(ago)}` : "now"));
    }

    const lines = [];
    const legend = [];
    for (const s of series) {
      const points = s.values.map(([time, value]) => [x(time), value === null ? null : y(value, s.axis)]);
      const drawn = points.filter(([, v]) => v !== null);
      lines.push(svg("path", {
        class: `line series-${s.name}`, "data-series": s.name, "data-axis": s.axis, d: pathData(points),
      }));
      if (drawn.length) {
        const [lastX, lastY] = drawn[drawn.length - 1];
        lines.push(svg("circle", { class: `dot series-${s.name}`, cx: lastX.toFixed(1), cy: lastY.toFixed(1), r: 2.5 }));
      }
      const known = s.values.filter(([, v]) => v !== null);
      const last = known.length ? FORMATS[formats[s.axis]](known[known.length - 1][1]) : "—";
      const item = document.createElement("li");
      item.className = `series-${s.name}`;
      item.append(svg("svg", { class: "swatch", viewBox: "0 0 12 12", width: 12, height: 12 },
        svg("line", { x1: 0, y1: 6, x2: 12, y2: 6 })), ` ${s.label} `);
      const value = document.createElement("b");
      value.textContent = last;
      item.append(value);
      legend.push(item);
    }

    const chart = svg("svg", {
      class: "chart-svg", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title,
      "data-from": from, "data-to": to, "data-left": tops.left ?? "", "data-right": tops.right ?? "",
      "data-plot": `${PAD.left} ${PAD.top} ${plot.width} ${plot.height}`,
    }, ...grid, ...lines);
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    const list = document.createElement("ul");
    list.className = "legend";
    list.append(...legend);
    figure.replaceChildren(caption, chart, list);
  }

  return { draw };
})();
