#!/usr/bin/env python3
"""Transforms template.yaml with the AWS SAM translator, offline, into the CloudFormation JSON
that `sam deploy` would submit, so that tests can check what SAM generates (roles, policies,
the asynchronous invoke configuration, the schedule). Usage: sam-transform.py TEMPLATE OUT.json

Sample parameter values stand in for a real deployment's; nothing is looked up in AWS (the
template names no managed policy, so the translator needs none).
"""
import json
import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

PARAMETERS = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "shop-unreserver",
    "DbSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/shop-db-AbCdEf",
    "SubnetIds": ["subnet-0a", "subnet-0b"],
    "SecurityGroupIds": ["sg-0a"],
}


class NoManagedPolicies:
    """The translator asks for AWS managed policy ARNs only when a template names one."""

    def load(self):
        return {}


def main():
    source, out = sys.argv[1], sys.argv[2]
    # The translator reads the region from a boto3 session; no call is made.
    os.environ["AWS_DEFAULT_REGION"] = PARAMETERS["AWS::Region"]
    with open(source, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    # `sam deploy` uploads the built code first; the translator takes the uploaded location.
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://artifacts-bucket/unreserver.zip"
    generated = transform(template, dict(PARAMETERS), NoManagedPolicies())
    with open(out, "w", encoding="utf-8") as f:
        json.dump(generated, f, indent=1, sort_keys=True)
    print(f"SAM generated {len(generated['Resources'])} resources into {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
