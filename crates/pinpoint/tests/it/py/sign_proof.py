"""Signs (but does not send) an STS GetCallerIdentity with botocore, an implementation
independent of Pinpoint's, and prints the Datadog-format proof for `Authorization: Delegated`.

Usage: sign_proof.py <creds json> <user|role> <org id> [region] [org header name]
"""
import base64
import json
import sys

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

creds = json.loads(sys.argv[1])[sys.argv[2]]
org = sys.argv[3]
region = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else "us-east-1"
org_header = sys.argv[5] if len(sys.argv) > 5 else "x-ddog-org-id"
host = "sts.amazonaws.com" if region == "us-east-1" else f"sts.{region}.amazonaws.com"
body = "Action=GetCallerIdentity&Version=2011-06-15"
req = AWSRequest(method="POST", url=f"https://{host}/", data=body, headers={
    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
    "Content-Length": str(len(body)), org_header: org, "host": host})
SigV4Auth(Credentials(creds["key"], creds["secret"], creds["token"]), "sts", region).add_auth(req)
headers = {k: [v] for k, v in req.headers.items()}
b64 = lambda s: base64.b64encode(s.encode()).decode()
print("Delegated " + "|".join([b64(body), b64(json.dumps(headers, separators=(",", ":"))), "POST", b64(f"https://{host}")]))
