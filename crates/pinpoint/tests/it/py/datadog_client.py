"""Datadog's own Python client against Pinpoint: AWSAuth proof -> /api/v2/delegated-token,
then /api/v2/current_user with the token, then persona mappings through
CloudAuthenticationApi. Prints a JSON summary.

Usage: datadog_client.py <pinpoint api url> <org id> <creds json> <account identifier> <arn pattern>
"""
import json
import os
import sys

host, org, creds, identifier, pattern = sys.argv[1:6]
role = json.loads(creds)["role"]
os.environ.update(AWS_ACCESS_KEY_ID=role["key"], AWS_SECRET_ACCESS_KEY=role["secret"], AWS_SESSION_TOKEN=role["token"])

from datadog_api_client import ApiClient, Configuration
from datadog_api_client.aws import AWSAuth
from datadog_api_client.v2.api.cloud_authentication_api import CloudAuthenticationApi
from datadog_api_client.v2.api.users_api import UsersApi
from datadog_api_client.v2.model.aws_cloud_auth_persona_mapping_create_attributes import AWSCloudAuthPersonaMappingCreateAttributes
from datadog_api_client.v2.model.aws_cloud_auth_persona_mapping_create_data import AWSCloudAuthPersonaMappingCreateData
from datadog_api_client.v2.model.aws_cloud_auth_persona_mapping_create_request import AWSCloudAuthPersonaMappingCreateRequest
from datadog_api_client.v2.model.aws_cloud_auth_persona_mapping_type import AWSCloudAuthPersonaMappingType

cfg = Configuration(host=host, delegated_auth_provider=AWSAuth(), delegated_auth_org_uuid=org)
for op in ("create_aws_cloud_auth_persona_mapping", "list_aws_cloud_auth_persona_mappings",
           "get_aws_cloud_auth_persona_mapping", "delete_aws_cloud_auth_persona_mapping"):
    cfg.unstable_operations[op] = True
with ApiClient(cfg) as api:
    me = UsersApi(api).get_current_user()
    ca = CloudAuthenticationApi(api)
    created = ca.create_aws_cloud_auth_persona_mapping(body=AWSCloudAuthPersonaMappingCreateRequest(
        data=AWSCloudAuthPersonaMappingCreateData(
            type=AWSCloudAuthPersonaMappingType.AWS_CLOUD_AUTH_CONFIG,
            attributes=AWSCloudAuthPersonaMappingCreateAttributes(account_identifier=identifier, arn_pattern=pattern))))
    listed = [m.attributes.arn_pattern for m in ca.list_aws_cloud_auth_persona_mappings().data]
    fetched = ca.get_aws_cloud_auth_persona_mapping(persona_mapping_id=created.data.id).data.attributes.arn_pattern
    ca.delete_aws_cloud_auth_persona_mapping(persona_mapping_id=created.data.id)
    after = [m.attributes.arn_pattern for m in ca.list_aws_cloud_auth_persona_mappings().data]
print(json.dumps({"me": me.data.id, "created": created.data.id, "listed": listed, "fetched": fetched, "after": after}))
