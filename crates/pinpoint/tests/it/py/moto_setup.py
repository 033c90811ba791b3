"""Creates real identities in a running moto_server and prints their credentials as JSON.

Usage: moto_setup.py <moto url>. Afterwards moto verifies every signature
(POST /moto-api/reset-auth with 0), so a tampered proof is refused by STS itself.
"""
import json
import sys
import urllib.request

import boto3

url = sys.argv[1]
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="alice")
alice = iam.create_access_key(UserName="alice")["AccessKey"]
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
role = iam.create_role(RoleName="dd-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
sts = boto3.client("sts", **kw)
session = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="sess1")["Credentials"]
req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}, method="POST")
urllib.request.urlopen(req).read()
print(json.dumps({
    "user": {"key": alice["AccessKeyId"], "secret": alice["SecretAccessKey"], "token": None},
    "role": {"key": session["AccessKeyId"], "secret": session["SecretAccessKey"], "token": session["SessionToken"]},
}))
