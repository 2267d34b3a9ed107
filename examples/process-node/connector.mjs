#!/usr/bin/env node
// An example Tandem connector in JavaScript (Node 18 or newer, no dependencies):
// records in one JSON file, served over the plugin protocol of
// docs/plugin-protocol.md: JSON lines on stdin and stdout, the log on stderr.
//
// Settings: `path` (the JSON file, relative to the config file's folder; created on
// first write), `kinds` (default all four), `page_size` (default 500).

import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";

const KINDS = ["contact", "customer", "vendor", "bank_account"];
const COMMON = [
  "name", "name_2", "address", "address_2", "city", "post_code", "county", "country_code",
  "phone", "mobile_phone", "fax", "email", "home_page", "vat_registration_no",
  "registration_no", "currency_code", "language_code", "salesperson_code", "territory_code",
];
const ONLY = {
  contact: ["contact_type", "company_id", "first_name", "surname", "job_title", "business_relations"],
  bank_account: ["iban", "swift_code", "bank_account_no", "bank_branch_no"],
};

// A connector error, answered as {"err": {"error": type, ...}}.
class ConnectorError extends Error {
  constructor(error, keys) {
    super(keys.message ?? error);
    this.body = { error, ...keys };
  }
}
const configError = (message) => new ConnectorError("config", { message });
const notFound = (id) => new ConnectorError("not_found", { id });
const conflict = (id) => new ConnectorError("conflict", { id });
const invalid = (id, message) => new ConnectorError("invalid_record", { id, message });

const log = (level, message) => process.stderr.write(`${level}: ${message}\n`);

class JsonFileConnector {
  constructor(settings, baseDir) {
    for (const key of Object.keys(settings)) {
      if (!["path", "kinds", "page_size"].includes(key)) {
        throw configError(`\`${key}\`: unknown setting; known: path, kinds, page_size`);
      }
    }
    if (typeof settings.path !== "string") throw configError('`path`: give the JSON file, e.g. "erp.json"');
    this.kinds = settings.kinds ?? KINDS;
    for (const kind of this.kinds) {
      if (!KINDS.includes(kind)) throw configError(`\`kinds\`: \`${kind}\` is not a kind`);
    }
    this.pageSize = settings.page_size ?? 500;
    this.file = path.resolve(baseDir, settings.path);
    // { next_id, records: { id: { kind, version, modified_at, fields } } }
    this.data = fs.existsSync(this.file)
      ? JSON.parse(fs.readFileSync(this.file, "utf8"))
      : { next_id: 1, records: {} };
    log("info", `serving ${this.file}`);
  }

  info() {
    return {
      name: "tandem-example-json-node",
      version: "0.1.0",
      capabilities: { kinds: this.kinds, incremental: false, write: true, delete: true, max_batch: 100 },
    };
  }

  held(kind) {
    if (!this.kinds.includes(kind)) throw configError(`this connector does not hold ${kind}s`);
  }

  read(kind, cursor) {
    this.held(kind);
    const ids = Object.keys(this.data.records)
      .filter((id) => this.data.records[id].kind === kind)
      .sort((a, b) => Number(a) - Number(b));
    const start = cursor ? Number(cursor) : 0;
    const slice = ids.slice(start, start + this.pageSize);
    const hasMore = start + this.pageSize < ids.length;
    const records = slice.map((id) => {
      const r = this.data.records[id];
      return { id, kind, fields: r.fields, version: String(r.version), modified_at: r.modified_at };
    });
    return { records, listing: "full", cursor: hasMore ? String(start + this.pageSize) : null, has_more: hasMore };
  }

  checkNames(kind, fields, id) {
    const known = [...COMMON, ...(ONLY[kind] ?? [])];
    for (const name of Object.keys(fields)) {
      if (!known.includes(name) && !name.startsWith("x_")) {
        throw invalid(id, `\`${name}\` is not a field of ${kind}s`);
      }
    }
  }

  current(kind, id, version) {
    const r = this.data.records[id];
    if (!r || r.kind !== kind) throw notFound(id);
    if (version !== null && version !== undefined && version !== String(r.version)) throw conflict(id);
    return r;
  }

  apply(kind, op) {
    const now = new Date().toISOString();
    if (op.op === "create") {
      this.checkNames(kind, op.fields, null);
      const id = String(this.data.next_id++);
      const fields = Object.fromEntries(Object.entries(op.fields).filter(([, v]) => v !== null));
      this.data.records[id] = { kind, version: 1, modified_at: now, fields };
      return { id, version: "1", modified_at: now };
    }
    if (op.op === "update") {
      this.checkNames(kind, op.changes, op.id);
      const r = this.current(kind, op.id, op.version);
      for (const [name, value] of Object.entries(op.changes)) {
        if (value === null) delete r.fields[name];
        else r.fields[name] = value;
      }
      r.version += 1;
      r.modified_at = now;
      return { id: op.id, version: String(r.version), modified_at: now };
    }
    if (op.op === "delete") {
      this.current(kind, op.id, op.version);
      delete this.data.records[op.id];
      return { id: op.id, version: null, modified_at: null };
    }
    throw new ConnectorError("fatal", { message: `unknown op \`${op.op}\`` });
  }

  write(kind, ops) {
    this.held(kind);
    const outcomes = ops.map((op) => {
      try {
        return { ok: this.apply(kind, op) };
      } catch (e) {
        if (e instanceof ConnectorError) return { err: e.body };
        throw e;
      }
    });
    // Written to a new file, then renamed over the old one: never half a file.
    const temporary = `${this.file}.tmp`;
    fs.writeFileSync(temporary, JSON.stringify(this.data));
    fs.renameSync(temporary, this.file);
    return outcomes;
  }
}

let connector = null;

function answer(message) {
  switch (message.type) {
    case "describe":
      return { name: "tandem-example-json-node", version: "0.1.0", abi_version: 1, type_name: "json-node" };
    case "init":
      connector = new JsonFileConnector(message.settings ?? {}, message.base_dir ?? ".");
      return null;
    case "call":
      if (!connector) throw new ConnectorError("fatal", { message: "`call` before `init`" });
      switch (message.call) {
        case "info": return connector.info();
        case "check": return null;
        case "read": return connector.read(message.kind, message.cursor);
        case "write": return connector.write(message.kind, message.ops);
      }
  }
  throw new ConnectorError("fatal", { message: `unknown message ${message.type} ${message.call ?? ""}` });
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let message;
  try {
    message = JSON.parse(line);
  } catch (e) {
    log("error", `ignored a line that is not a request: ${e.message}`);
    return;
  }
  let reply;
  try {
    reply = { id: message.id, ok: answer(message) };
  } catch (e) {
    if (!(e instanceof ConnectorError)) log("error", e.stack);
    reply = { id: message.id, err: e instanceof ConnectorError ? e.body : { error: "fatal", message: String(e) } };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
