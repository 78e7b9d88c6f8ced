"""What AWS's own CDK generates for the wiring template.yaml writes by hand, printed as JSON for
tests/fixtures/cdk-oracle.json (tests/it/sam.rs compares the template with it). Runs offline:

    python3 -m venv /tmp/cdk && /tmp/cdk/bin/pip install aws-cdk-lib constructs
    /tmp/cdk/bin/python scripts/cdk-oracle.py > tests/fixtures/cdk-oracle.json

Today: the trust policy of a schedule's execution role when the schedule is in a group of its
own (aws_scheduler + aws_scheduler_targets). CDK refuses inline code for provided.al2023, so the
function is a stand-in: only the wiring around it matters."""
import json

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets

app = cdk.App()
stack = cdk.Stack(app, "Oracle", env=cdk.Environment(account="123456789012", region="eu-west-1"))
fn = lambda_.Function(stack, "Fn", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                      code=lambda_.Code.from_inline("def handler(e, c): pass"))
group = scheduler.ScheduleGroup(stack, "Group", schedule_group_name="unreserver-oracle")
scheduler.Schedule(stack, "Every5", schedule=scheduler.ScheduleExpression.rate(cdk.Duration.minutes(5)),
                   schedule_group=group, target=targets.LambdaInvoke(fn))
template = app.synth().get_stack_by_name("Oracle").template
out = {}
for name, res in template["Resources"].items():
    trust = res.get("Properties", {}).get("AssumeRolePolicyDocument", {})
    if res["Type"] == "AWS::IAM::Role" and "scheduler.amazonaws.com" in json.dumps(trust):
        out["scheduler_role_trust"] = trust
print(json.dumps(out, indent=1, sort_keys=True))
