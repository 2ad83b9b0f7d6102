"""Drives the gateway with the official Mixpeek Python SDK (mixpeek==1.3.783).

Usage: python3 check.py GATEWAY_URL GATEWAY_KEY
Exits non-zero (with a message) on the first unexpected answer.
"""
import json
import sys

import mixpeek

url, key = sys.argv[1], sys.argv[2]


def api(token):
    return mixpeek.ApiClient(mixpeek.Configuration(host=url, access_token=token))


adhoc = mixpeek.AdhocRetrieversApi(api(key))
first = adhoc.get_adhoc_execution_retrievers("exec_sdk")
assert first.execution_id == "exec_sdk", first
assert first.status == "completed", first.status
again = adhoc.get_adhoc_execution_retrievers("exec_sdk")
assert again.to_dict() == first.to_dict(), "cached answer differs"

listed = adhoc.list_adhoc_executions_retrievers(limit=3)
assert len(listed.results) == 3, listed
assert all(r.status for r in listed.results)

retrievers = mixpeek.RetrieversApi(api(key))
detail = retrievers.get_execution_retrievers("ret_sdk", "exec_7")
assert detail.execution_id == "exec_7", detail

try:
    mixpeek.AdhocRetrieversApi(api("not-a-gateway-key")).get_adhoc_execution_retrievers("exec_sdk")
except mixpeek.ApiException as error:
    assert error.status == 401, error.status
    assert json.loads(error.body)["error"]["type"] == "unauthorized"
else:
    raise AssertionError("a wrong key was accepted")

try:
    adhoc.get_adhoc_execution_retrievers("missing_id")
except mixpeek.ApiException as error:
    assert error.status == 404, error.status
else:
    raise AssertionError("an unknown execution was found")

print("sdk ok")
