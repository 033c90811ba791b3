"""Deletes dd-role and creates a role with the same name (a new unique id), then assumes it
and prints the session credentials as JSON. Usage: moto_recreate_role.py <moto url>"""
import json
import sys
import urllib.request

import boto3

url = sys.argv[1]
req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"1000", headers={"Content-Type": "text/plain"}, method="POST")
urllib.request.urlopen(req).read()
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
iam.delete_role(RoleName="dd-role")
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
role = iam.create_role(RoleName="dd-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
session = boto3.client("sts", **kw).assume_role(RoleArn=role["Arn"], RoleSessionName="sess2")["Credentials"]
req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}, method="POST")
urllib.request.urlopen(req).read()
print(json.dumps({"role": {"key": session["AccessKeyId"], "secret": session["SecretAccessKey"], "token": session["SessionToken"]}}))
