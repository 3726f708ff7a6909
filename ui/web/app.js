// The mesh's map: snapshots from /api/events drawn as SVG, kept by ID so
// that an update moves and recolors what is there instead of redrawing.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const NODE_W = 150, NODE_H = 44, GROUP_COLS = 3, PAD = 14, TITLE_H = 20, LABELS_UP_TO = 300;
  const $ = (id) => document.getElementById(id);
  const els = { edges: new Map(), nodes: new Map() };
  // What tests and figures read: render and frame times, when each edge
  // first appeared (wall clock ms, the first 5,000 edges).
  const stats = { renders: 0, lastRenderMs: 0, maxRenderMs: 0, nodes: 0, edges: 0, version: 0, events: 0, frames: [], renderTimes: [], seen: {}, seenCount: 0 };
  window.__clustermesh = stats;
  let source = null, selected = null, lastSelectionFetch = 0;

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(el);
    return el;
  }

  function selection() {
    const p = new URLSearchParams();
    for (const k of ["cluster", "namespace", "verdict", "window"]) {
      const v = $(k).value;
      if (v) p.set(k, v);
    }
    return p.toString();
  }

  function connect() {
    if (source) source.close();
    source = new EventSource("api/events?" + selection());
    source.addEventListener("map", (ev) => {
      stats.events++;
      const t0 = performance.now();
      render(JSON.parse(ev.data));
      requestAnimationFrame(() => setTimeout(() => {
        stats.frames.push(performance.now() - t0);
        if (stats.frames.length > 500) stats.frames.shift();
      }, 0));
    });
    source.onerror = () => setStatus("reconnecting to the UI server…", true);
  }

  function setStatus(text, down) {
    const s = $("status");
    if (s.textContent !== text) s.textContent = text;
    if (s.classList.contains("down") !== !!down) s.classList.toggle("down", !!down);
  }

  function fillSelect(id, values) {
    const sel = $(id), cur = sel.value;
    const have = Array.from(sel.options).map((o) => o.value).slice(1).join("\n");
    if (have === values.join("\n")) return;
    while (sel.options.length > 1) sel.remove(1);
    for (const v of values) sel.add(new Option(v, v));
    sel.value = values.includes(cur) ? cur : "";
  }

  // layout places nodes in columns of clusters, boxes of namespaces.
  function layout(nodes) {
    const clusters = new Map();
    for (const n of nodes) {
      const c = n.cluster || "", ns = n.namespace || "";
      if (!clusters.has(c)) clusters.set(c, new Map());
      const g = clusters.get(c);
      if (!g.has(ns)) g.set(ns, []);
      g.get(ns).push(n);
    }
    const names = Array.from(clusters.keys()).sort((a, b) => (a === "") - (b === "") || a.localeCompare(b));
    const pos = new Map(), boxes = [];
    const byName = (a, b) => (a === "") - (b === "") || a.localeCompare(b);
    let x = PAD, height = 0;
    for (const c of names) {
      const groups = clusters.get(c);
      // A column is one node wide for a few nodes, up to GROUP_COLS wide.
      let cols = 1;
      for (const list of groups.values()) cols = Math.max(cols, Math.min(GROUP_COLS, Math.ceil(Math.sqrt(list.length / 3))));
      const colW = cols * NODE_W + 2 * PAD;
      let y = PAD + TITLE_H;
      const nsBoxes = [];
      for (const ns of Array.from(groups.keys()).sort(byName)) {
        const list = groups.get(ns);
        const rows = Math.ceil(list.length / cols);
        nsBoxes.push({ x: x + PAD / 2, y: y, w: colW - PAD, h: rows * NODE_H + TITLE_H + 4, title: ns || (c ? "nodes and peers" : "") });
        list.forEach((n, i) => pos.set(n.id, { x: x + PAD + (i % cols) * NODE_W + 10, y: y + TITLE_H + Math.floor(i / cols) * NODE_H + NODE_H / 2 }));
        y += rows * NODE_H + TITLE_H + 14;
      }
      boxes.push({ x: x, y: PAD, w: colW, h: y - PAD, title: c || "outside the mesh", ns: nsBoxes });
      height = Math.max(height, y);
      x += colW + 6 * PAD;
    }
    return { pos: pos, boxes: boxes, width: x, height: height + PAD };
  }

  let groupsKey = "";
  function drawGroups(boxes) {
    const key = JSON.stringify(boxes);
    if (key === groupsKey) return;
    groupsKey = key;
    const g = $("groups");
    g.textContent = "";
    for (const b of boxes) {
      svg("rect", { x: b.x, y: b.y, width: b.w, height: b.h, rx: 8, class: "group-cluster" }, g);
      svg("text", { x: b.x + 8, y: b.y + 15, class: "group-title" }, g).textContent = b.title;
      for (const n of b.ns) {
        svg("rect", { x: n.x, y: n.y, width: n.w, height: n.h, rx: 6, class: "group-namespace" }, g);
        svg("text", { x: n.x + 6, y: n.y + 14, class: "ns-title" }, g).textContent = n.title;
      }
    }
  }

  function drawNodes(nodes, pos) {
    const seen = new Set();
    const parent = $("nodes");
    for (const n of nodes) {
      seen.add(n.id);
      let el = els.nodes.get(n.id);
      if (!el) {
        el = svg("g", { "data-id": n.id, "data-kind": n.kind, class: "node " + n.kind }, parent);
        svg("circle", { r: 7 }, el);
        svg("text", { x: 11, y: 4 }, el).textContent = n.name;
        svg("title", {}, el).textContent = n.id + " (" + n.kind + ")";
        el.addEventListener("click", () => select({ id: n.id, kind: "node" }));
        els.nodes.set(n.id, el);
      }
      const p = pos.get(n.id), tr = "translate(" + p.x + "," + p.y + ")";
      if (el.getAttribute("transform") !== tr) el.setAttribute("transform", tr);
      const sel = !!selected && selected.id === n.id;
      if (el.classList.contains("selected") !== sel) el.classList.toggle("selected", sel);
    }
    for (const [id, el] of els.nodes) if (!seen.has(id)) { el.remove(); els.nodes.delete(id); }
  }

  function edgeClass(e) {
    return e.dropShare >= 0.5 ? "drop" : e.dropShare > 0 ? "mixed" : "ok";
  }

  function edgePath(a, b, k) {
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const ux = dx / len, uy = dy / len, r = 9;
    const sx = a.x + ux * r, sy = a.y + uy * r, ex = b.x - ux * r, ey = b.y - uy * r;
    const bend = 18 + 10 * k;
    const cx = (sx + ex) / 2 - uy * bend, cy = (sy + ey) / 2 + ux * bend;
    return { d: "M" + sx.toFixed(1) + "," + sy.toFixed(1) + " Q" + cx.toFixed(1) + "," + cy.toFixed(1) + " " + ex.toFixed(1) + "," + ey.toFixed(1), mx: (sx + 2 * cx + ex) / 4, my: (sy + 2 * cy + ey) / 4 };
  }

  function edgeText(e) {
    return e.port + "/" + e.protocol + (e.l7 ? " " + e.l7 : "") + " " + e.rate.toPrecision(2) + "/s" + (e.dropShare > 0 ? " " + Math.round(e.dropShare * 100) + "% dropped" : "");
  }

  function edgeTitle(e) {
    return e.id + "\n" + edgeText(e) + "\n" + Object.entries(e.verdicts).map((v) => v[0] + ": " + v[1]).join(", ") + (e.service ? "\nservice " + e.service : "");
  }

  function setIf(el, name, value) {
    if (el.attrs[name] === value) return;
    el.attrs[name] = value;
    el.path.setAttribute(name, value);
  }

  function drawEdges(edges, pos) {
    const seen = new Set(), parent = $("edges"), pairs = new Map(), labels = edges.length <= LABELS_UP_TO;
    for (const e of edges) {
      const a = pos.get(e.source), b = pos.get(e.destination);
      if (!a || !b) continue;
      seen.add(e.id);
      const pair = e.source + "\n" + e.destination, k = pairs.get(pair) || 0;
      pairs.set(pair, k + 1);
      let el = els.edges.get(e.id);
      if (!el) {
        const path = svg("path", { "data-id": e.id, "data-source": e.source, "data-destination": e.destination, "data-port": e.port, "data-protocol": e.protocol }, parent);
        const title = svg("title", {}, path);
        path.addEventListener("click", () => select({ id: e.id, kind: "edge" }));
        path.addEventListener("mouseenter", () => { title.textContent = edgeTitle(el.data); });
        el = { path: path, label: null, attrs: {}, data: e };
        if (stats.seenCount < 5000 && !(e.id in stats.seen)) { stats.seen[e.id] = Date.now(); stats.seenCount++; }
        els.edges.set(e.id, el);
      }
      // Only what changed is written: at 2,000 edges an update that
      // rewrites every path costs a whole repaint.
      el.data = e;
      const g = edgePath(a, b, k);
      setIf(el, "d", g.d);
      setIf(el, "class", "edge " + edgeClass(e) + (selected && selected.id === e.id ? " selected" : ""));
      setIf(el, "data-drop-share", e.dropShare.toFixed(2));
      if (labels) {
        if (!el.label) el.label = svg("text", { class: "edge-label" }, parent);
        el.label.setAttribute("x", g.mx.toFixed(1));
        el.label.setAttribute("y", g.my.toFixed(1));
        const text = e.port + "/" + e.protocol + (e.l7 ? " " + e.l7 : "") + " " + e.rate.toPrecision(2) + "/s";
        if (el.label.textContent !== text) el.label.textContent = text;
      } else if (el.label) { el.label.remove(); el.label = null; }
    }
    for (const [id, el] of els.edges) if (!seen.has(id)) { el.path.remove(); if (el.label) el.label.remove(); els.edges.delete(id); }
  }

  let servicesKey = "";
  function drawServices(services) {
    const key = JSON.stringify(services);
    if (key === servicesKey) return;
    servicesKey = key;
    const ul = $("services");
    ul.textContent = "";
    if (!services.length) { const li = document.createElement("li"); li.className = "hint"; li.textContent = "none in the window"; ul.appendChild(li); }
    for (const s of services) {
      const li = document.createElement("li");
      li.className = "service";
      li.dataset.service = s.namespace + "/" + s.name;
      li.textContent = s.namespace + "/" + s.name + ": served by " + s.clusters.join(", ");
      ul.appendChild(li);
    }
  }

  function render(snap) {
    const t0 = performance.now();
    fillSelect("cluster", snap.clusters);
    fillSelect("namespace", snap.namespaces);
    const l = layout(snap.nodes);
    const map = $("map");
    // The SVG's size is written only when it changes: writing it, even
    // unchanged, lays out and repaints every edge.
    const w = String(Math.max(l.width, 400)), h = String(Math.max(l.height, 300));
    if (map.getAttribute("width") !== w) map.setAttribute("width", w);
    if (map.getAttribute("height") !== h) map.setAttribute("height", h);
    drawGroups(l.boxes);
    drawEdges(snap.edges, l.pos);
    drawNodes(snap.nodes, l.pos);
    drawServices(snap.services);
    const kinds = snap.nodes.length + " nodes · " + snap.edges.length + " edges · window " + snap.window;
    setStatus(snap.connected ? "live · " + kinds : "flow stream down" + (snap.error ? ": " + snap.error : "") + " · " + kinds, !snap.connected);
    stats.renders++;
    stats.lastRenderMs = performance.now() - t0;
    stats.maxRenderMs = Math.max(stats.maxRenderMs, stats.lastRenderMs);
    stats.renderTimes.push(stats.lastRenderMs);
    if (stats.renderTimes.length > 500) stats.renderTimes.shift();
    stats.nodes = snap.nodes.length;
    stats.edges = snap.edges.length;
    stats.version = snap.version;
    if (selected && performance.now() - lastSelectionFetch > 1000) loadFlows();
  }

  function select(sel) {
    selected = sel;
    for (const [id, el] of els.edges) if (el.data) setIf(el, "class", "edge " + edgeClass(el.data) + (id === sel.id ? " selected" : ""));
    for (const [id, el] of els.nodes) el.classList.toggle("selected", id === sel.id);
    $("selection-title").textContent = (sel.kind === "edge" ? "Flows of the edge " : "Flows of ") + sel.id;
    loadFlows();
  }

  function loadFlows() {
    const sel = selected;
    lastSelectionFetch = performance.now();
    fetch("api/flows?id=" + encodeURIComponent(sel.id)).then((r) => r.ok ? r.json() : r.text().then((t) => { throw new Error(t); })).then((body) => {
      if (selected !== sel) return;
      const tb = $("flows").tBodies[0];
      tb.textContent = "";
      for (const f of body.flows) {
        const tr = tb.insertRow();
        tr.className = "flow " + f.verdict;
        tr.dataset.verdict = f.verdict;
        tr.insertCell().textContent = f.line;
      }
      $("selection-info").textContent = body.flows.length + " last flows, newest first";
    }).catch((err) => { $("selection-info").textContent = "no flows: " + err.message; });
  }

  for (const k of ["cluster", "namespace", "verdict", "window"]) $(k).addEventListener("change", connect);
  connect();
})();
