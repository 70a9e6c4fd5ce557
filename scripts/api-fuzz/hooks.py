"""schemathesis hooks for scripts/api-fuzz.sh: a credential per role and the bodies
schemathesis cannot serialize by itself.

Every trove route takes the credential of one role (docs/api.md, "Credentials"): the
operator's admin token, a subscriber's OAuth2 bearer token (plus a member's `con_id` and
`key` on `/api/pds/*`), a connection's `nid:key` on `/v1/ingest`, a member's secret on
`/v1/members/{uid}/...`, HTTP Basic client credentials on `/oauth2/token`. With one header
for all, most operations would only ever answer 401/403, so the auth provider below picks
the credential by the operation's path, from `trove demo --json` (TROVE_API_FUZZ_DEMO).
"""

import base64
import csv
import io
import json
import os
import re
import zlib

import requests
import schemathesis
from hypothesis import strategies as st

with open(os.environ["TROVE_API_FUZZ_DEMO"], encoding="utf-8") as f:
    DEMO = json.load(f)
BASE_URL = os.environ["TROVE_API_FUZZ_URL"]
ENERGY = DEMO["subscribers"][0]
MEMBERS = {m["uid"]: m for m in DEMO["members"]}
FIRST_MEMBER = DEMO["members"][0]["uid"]

# Routes the operator calls; `/v1/connections/{id}/approve|promote` are the operator's too.
OPERATOR = re.compile(r"^/v1/(datasets|subscribers)|^/v1/members(/\{uid\})?$|^/v1/connections/\{id\}/(approve|promote)$")
MEMBER = re.compile(r"^/v1/members/\{uid\}/")
DATASET = re.compile(r"^(field_)?ds_[a-z0-9_]+$")


def member_uid(value):
    """The demo member a generated `uid` (or `<uid>.json` file) names, else the first one."""
    match = re.match(r"^([0-9]+)", str(value if value is not None else ""))
    uid = int(match.group(1)) if match else None
    return uid if uid in MEMBERS else FIRST_MEMBER


def subscriber_token():
    response = requests.post(
        f"{BASE_URL}/oauth2/token",
        auth=(ENERGY["client_id"], ENERGY["client_secret"]),
        data={"grant_type": "client_credentials", "scope": "mydex:pdx"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["access_token"]


@schemathesis.auth(refresh_interval=600)
class PerRole:
    def get(self, case, ctx):
        return subscriber_token()

    def set(self, case, token, ctx):
        path = case.operation.path
        params = case.path_parameters or {}
        case.headers = case.headers or {}
        if path == "/oauth2/token":
            basic = base64.b64encode(f"{ENERGY['client_id']}:{ENERGY['client_secret']}".encode()).decode()
            case.headers["Authorization"] = f"Basic {basic}"
            return
        if OPERATOR.search(path):
            bearer = DEMO["admin_token"]
        elif MEMBER.search(path):
            bearer = MEMBERS[member_uid(params.get("uid"))]["secret"]
        elif path.startswith("/v1/ingest/"):
            bearer = f"{ENERGY['connection']['nid']}:{ENERGY['connection']['key']}"
        else:
            bearer = token
        case.headers["Authorization"] = f"Bearer {bearer}"
        if path.startswith("/api/pds/"):
            # The member's half of a Mydex call: the `con_id` + `key` of the member the path
            # (or `uid=`) names, for energy-co's connection.
            query = case.query if isinstance(case.query, dict) else {}
            uid = member_uid(params.get("file", query.get("uid")))
            nid = str(ENERGY["connection"]["nid"])
            # The demo's last member has no agreement with energy-co: its calls are refused.
            pair = MEMBERS[uid]["keys"].get(nid, {"con_id": f"{uid}-{nid}", "key": "no-agreement"})
            case.query = {**query, "con_id": pair["con_id"], "key": pair["key"]}
            # Half of the well-formed dataset names become one the agreement grants, so reads
            # get past the 403 of an unknown dataset.
            dataset = query.get("dataset")
            if isinstance(dataset, str) and DATASET.match(dataset) and zlib.crc32(dataset.encode()) % 2 == 0:
                granted = "ds_energy_consumption" if path.startswith("/api/pds/transaction") else "ds_personal_details"
                case.query["dataset"] = granted


def remember_key(body):
    uid, nid = body["con_id"].split("-")
    member = MEMBERS.get(int(uid))
    if member is not None:
        member["keys"][nid] = {"con_id": body["con_id"], "key": body["key"]}


@schemathesis.hook
def after_call(ctx, case, response):
    """Keeps the demo's agreements usable for the Mydex calls that follow: an approval issues
    a new key for the pair (the old one stops working), and a revoked agreement is approved
    again (with a new key)."""
    path = case.operation.path
    if response.status_code != 200 or not path.startswith("/v1/members/{uid}/agreements/{connection_id}/"):
        return
    if path.endswith("/approve"):
        remember_key(response.json())
    elif path.endswith("/revoke"):
        url = f"{BASE_URL}/v1/members/{case.path_parameters['uid']}/agreements/{case.path_parameters['connection_id']}/approve"
        again = requests.post(url, headers={"Authorization": case.headers["Authorization"]}, timeout=30)
        again.raise_for_status()
        remember_key(again.json())


def _rows(value):
    return value if isinstance(value, list) else [value]


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    return b"".join(json.dumps(row).encode() + b"\n" for row in _rows(value))


@schemathesis.serializer("text/csv")
def csv_rows(ctx, value):
    rows = [r for r in _rows(value) if isinstance(r, dict)]
    header = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return out.getvalue().encode()


# An Arrow IPC stream is opaque to a JSON schema: arbitrary bytes probe the decoder.
schemathesis.openapi.media_type("application/vnd.apache.arrow.stream", st.binary(max_size=512))
