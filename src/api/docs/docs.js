// The API reference: fetches /api/openapi.json and lists its operations by tag, with their
// parameters, request bodies, responses and error codes. Plain DOM, no dependencies; text is
// always set as text, never as HTML.
"use strict";

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// Inline `code` in descriptions becomes <code>; everything else stays text.
function prose(text) {
  const p = el("p");
  String(text || "").split("`").forEach((part, i) => p.append(i % 2 ? el("code", {}, part) : part));
  return p;
}

function refName(ref) {
  return ref.split("/").pop();
}

// A short type for a schema: `Name`, `string`, `[Name]`, `integer | null`, …
function typeOf(schema) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.oneOf) return schema.oneOf.map(typeOf).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const types = [].concat(schema.type || "object");
  return types
    .map((t) => (t === "array" ? "[" + typeOf(schema.items) + "]" : t + (schema.format && t !== "null" ? " (" + schema.format + ")" : "")))
    .join(" | ");
}

// The object a property holds (itself, its reference, an item, or the non-null alternative), and
// its name ("" when inline).
function held(doc, prop) {
  if (!prop) return ["", null];
  if (prop.$ref) return [refName(prop.$ref), doc.components.schemas[refName(prop.$ref)]];
  if (prop.oneOf) return held(doc, prop.oneOf.find((s) => s.$ref || s.properties));
  if (prop.items) return held(doc, prop.items);
  return ["", prop.properties ? prop : null];
}

// A schema's properties as a table, the named schema first.
function schemaTable(doc, schema, seen) {
  let name = "";
  if (schema && schema.$ref) {
    name = refName(schema.$ref);
    schema = doc.components.schemas[name];
  }
  const box = el("div");
  if (!schema) return box;
  if (name) box.append(el("div", { class: "muted" }, name));
  const props = schema.properties;
  if (!props) {
    box.append(el("code", {}, typeOf(schema)));
    return box;
  }
  const required = new Set(schema.required || []);
  const table = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "")));
  for (const [key, prop] of Object.entries(props)) {
    const cell = el("td", {}, el("code", {}, typeOf(prop)));
    const row = el("tr", {}, el("td", {}, el("code", {}, key + (required.has(key) ? "" : "?"))), cell,
      el("td", {}, prose(prop.description)));
    table.append(row);
    const [innerName, inner] = held(doc, prop);
    if (inner && inner.properties && !seen.has(innerName)) {
      const next = new Set(seen).add(innerName);
      const shown = innerName ? { $ref: "#/components/schemas/" + innerName } : inner;
      table.append(el("tr", {}, el("td", {}), el("td", { colspan: "2" }, schemaTable(doc, shown, next))));
    }
  }
  box.append(table);
  return box;
}

function content(doc, c) {
  const box = el("div");
  for (const [type, media] of Object.entries(c || {})) {
    box.append(el("div", { class: "muted" }, type));
    if (media.schema) box.append(schemaTable(doc, media.schema, new Set()));
  }
  return box;
}

function operation(doc, path, method, op) {
  const id = op.operationId || method + path;
  const a = el("article", { id });
  a.append(el("h3", {}, el("span", { class: "method " + method }, method.toUpperCase()), " ", path));
  if (op.summary) a.append(prose(op.summary));
  if (op.description) a.append(prose(op.description));
  const auth = op.security && op.security.every((s) => Object.keys(s).length === 0)
    ? "No token needed."
    : "Token: Authorization: Bearer, or the session cookie.";
  a.append(el("p", { class: "muted" }, auth, " operationId: ", el("code", {}, id)));
  if (op.parameters && op.parameters.length) {
    const t = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "")));
    for (const p of op.parameters) {
      t.append(el("tr", {}, el("td", {}, el("code", {}, p.name + (p.required ? "" : "?"))), el("td", {}, p.in),
        el("td", {}, el("code", {}, typeOf(p.schema))), el("td", {}, prose(p.description))));
    }
    a.append(el("h4", {}, "Parameters"), t);
  }
  if (op.requestBody) {
    a.append(el("h4", {}, "Request body"), content(doc, op.requestBody.content));
  }
  a.append(el("h4", {}, "Responses"));
  const t = el("table");
  for (const [status, r] of Object.entries(op.responses || {})) {
    t.append(el("tr", {}, el("td", { class: "status" }, status), el("td", {}, prose(r.description), content(doc, r.content))));
  }
  a.append(t);
  return a;
}

async function main() {
  const ops = document.getElementById("ops");
  const toc = document.getElementById("toc");
  let doc;
  try {
    const resp = await fetch("/api/openapi.json");
    doc = await resp.json();
  } catch (e) {
    ops.replaceChildren(el("p", {}, "The description could not be loaded: " + e));
    return;
  }
  const byTag = new Map((doc.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, { tag: { name: tag }, ops: [] });
      byTag.get(tag).ops.push([path, method, op]);
    }
  }
  ops.replaceChildren(el("p", {}, doc.info.title + " " + doc.info.version), prose(doc.info.description));
  toc.replaceChildren();
  for (const { tag, ops: list } of byTag.values()) {
    if (!list.length) continue;
    const section = el("section", { class: "tag" }, el("h2", {}, tag.name));
    if (tag.description) section.append(prose(tag.description));
    toc.append(el("h3", {}, tag.name));
    for (const [path, method, op] of list) {
      section.append(operation(doc, path, method, op));
      toc.append(el("a", { href: "#" + (op.operationId || method + path) }, method.toUpperCase() + " " + path));
    }
    ops.append(section);
  }
}

main();
