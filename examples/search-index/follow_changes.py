#!/usr/bin/env python3
"""Keep a search index in step with a sluice dataset by following its change feed.

A recipe, not part of the server: it reads `GET /api/v1/datasets/{dataset}/changes` from the
cursor it saved last time, turns each change into a search document, pushes them in batches to a
Typesense- or Meilisearch-style JSONL import endpoint, and saves the new cursor only after the
push succeeded. A crash between the two pushes a page again on the next start, which upserts
make harmless (at least once, never lost).

  follow_changes.py --server http://127.0.0.1:8080 --dataset products --state products.cursor \
      --send 'http://typesense:8108/collections/products/documents/import?action=upsert' \
      --send-header 'X-TYPESENSE-API-KEY: …'
  follow_changes.py … --out would-send.jsonl --once     # write what it would send, then stop

A document is the change's `values` plus `id` (the key's values joined with `|`). A deletion is
sent as `{"id": …, "_deleted": true}`; point --send-delete at an endpoint that takes those, or
leave them to the JSONL receiver. The token comes from --token or SLUICE_TOKEN. Python 3 standard
library only.
"""

import argparse
import json
import os
import sys
import urllib.request


def document_id(key):
    return "|".join(str(v) for v in key.values())


def documents(changes):
    for c in changes:
        if c["op"] == "deleted" or c.get("values") is None:
            yield {"id": document_id(c["key"]), "_deleted": True}
        else:
            yield dict(c["values"], id=document_id(c["key"]))


def read_cursor(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def save_cursor(path, cursor):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{cursor}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fetch(args, after):
    query = f"after={after}&limit={args.limit}" + ("" if args.once else "&wait=30s")
    req = urllib.request.Request(f"{args.server.rstrip('/')}/api/v1/datasets/{args.dataset}/changes?{query}")
    req.add_header("Authorization", f"Bearer {args.token}")
    with urllib.request.urlopen(req, timeout=90) as resp:
        return json.load(resp)["data"]


def push(args, lines):
    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lines).encode()
    if args.out:
        with open(args.out, "ab") as f:
            f.write(body)
        return
    req = urllib.request.Request(args.send, data=body, method="POST")
    req.add_header("Content-Type", "text/plain")
    for h in args.send_header:
        name, _, value = h.partition(":")
        req.add_header(name.strip(), value.strip())
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--token", default=os.environ.get("SLUICE_TOKEN"))
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--state", required=True, help="file that remembers the cursor")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--send", help="JSONL import endpoint (POST)")
    ap.add_argument("--send-header", action="append", default=[], help="NAME: VALUE")
    ap.add_argument("--out", help="append the JSONL it would send to this file instead")
    ap.add_argument("--once", action="store_true", help="stop at the end of the feed")
    args = ap.parse_args()
    if not args.token:
        sys.exit("pass --token or set SLUICE_TOKEN")
    if not (args.send or args.out):
        sys.exit("pass --send URL or --out FILE")
    after = read_cursor(args.state)
    while True:
        page = fetch(args, after)
        if page["changes"]:
            push(args, list(documents(page["changes"])))
            after = page["next"]
            save_cursor(args.state, after)
            print(f"sent {len(page['changes'])} changes, cursor {after}", file=sys.stderr)
        elif args.once:
            return


if __name__ == "__main__":
    main()
