"""What AWS's own CDK generates for the wiring template.yaml writes by hand, printed as JSON for
tests/fixtures/cdk-oracle.json (tests/it/sam.rs compares the template with it). Runs offline:

    python3 -m venv /tmp/cdk && /tmp/cdk/bin/pip install aws-cdk-lib constructs
    /tmp/cdk/bin/python scripts/cdk-oracle.py > tests/fixtures/cdk-oracle.json

The trust policy of a schedule's execution role when the schedule is in a group of its own
(aws_scheduler + aws_scheduler_targets); what a function with an on-failure SQS destination and
no retries gets (its EventInvokeConfig and the permission to send); and an alarm's action on an
SNS topic encrypted with a key of its own (the topic and key policies CDK writes); and a function
with a reserved concurrency of its own that a principal may invoke (`grant_invoke`), as the
shop's door and its DoorInvokePolicy; and the tenant fan-out: an Express state machine whose
LambdaInvoke tasks call a lister and a worker (with a reserved concurrency of its own) from an
inline Map state, logging to a log group, started by a schedule (StepFunctionsStartExecution).
CDK refuses inline code for provided.al2023, so the
function is a stand-in: only the wiring around it matters."""
import json

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks

app = cdk.App()
stack = cdk.Stack(app, "Oracle", env=cdk.Environment(account="123456789012", region="eu-west-1"))
failed = sqs.Queue(stack, "FailedRuns")
fn = lambda_.Function(stack, "Fn", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                      code=lambda_.Code.from_inline("def handler(e, c): pass"),
                      retry_attempts=0, max_event_age=cdk.Duration.seconds(240),
                      on_failure=destinations.SqsDestination(failed))
key = kms.Key(stack, "AlarmKey")
topic = sns.Topic(stack, "AlarmTopic", master_key=key)
alarm = cloudwatch.Alarm(stack, "RunFailed", metric=fn.metric_errors(), threshold=1,
                         evaluation_periods=1)
alarm.add_alarm_action(actions.SnsAction(topic))
group = scheduler.ScheduleGroup(stack, "Group", schedule_group_name="unreserver-oracle")
scheduler.Schedule(stack, "Every5", schedule=scheduler.ScheduleExpression.rate(cdk.Duration.minutes(5)),
                   schedule_group=group, target=targets.LambdaInvoke(fn))
door = lambda_.Function(stack, "Door", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                        code=lambda_.Code.from_inline("def handler(e, c): pass"),
                        reserved_concurrent_executions=5)
shop = iam.Role(stack, "Shop", assumed_by=iam.AccountRootPrincipal())
door.grant_invoke(shop)
lister = lambda_.Function(stack, "Lister", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                          code=lambda_.Code.from_inline("def handler(e, c): pass"))
worker = lambda_.Function(stack, "Worker", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                          code=lambda_.Code.from_inline("def handler(e, c): pass"),
                          reserved_concurrent_executions=4)
list_tenants = tasks.LambdaInvoke(stack, "ListTenants", lambda_function=lister,
                                  payload=sfn.TaskInput.from_object({"action": "tenants"}),
                                  result_selector={"tenants.$": "$.Payload.tenants"})
run_tenant = tasks.LambdaInvoke(stack, "RunTenant", lambda_function=worker,
                                payload=sfn.TaskInput.from_object(
                                    {"action": "run", "tenant.$": "$.tenant", "source": "fanout"}),
                                result_path=sfn.JsonPath.DISCARD)
each_tenant = sfn.Map(stack, "RunEachTenant", items_path="$.tenants", max_concurrency=4,
                      item_selector={"tenant.$": "$$.Map.Item.Value"})
each_tenant.item_processor(run_tenant)
fan_out = sfn.StateMachine(stack, "FanOut", state_machine_type=sfn.StateMachineType.EXPRESS,
                           definition_body=sfn.DefinitionBody.from_chainable(list_tenants.next(each_tenant)),
                           logs=sfn.LogOptions(destination=logs.LogGroup(stack, "FanOutLogs"),
                                               level=sfn.LogLevel.ERROR, include_execution_data=True))
scheduler.Schedule(stack, "FanOutEvery5", schedule=scheduler.ScheduleExpression.rate(cdk.Duration.minutes(5)),
                   schedule_group=group, target=targets.StepFunctionsStartExecution(fan_out))
template = app.synth().get_stack_by_name("Oracle").template
door_id = next(n for n, r in template["Resources"].items()
               if r["Type"] == "AWS::Lambda::Function" and n.startswith("Door"))
shop_id = next(n for n, r in template["Resources"].items()
               if r["Type"] == "AWS::IAM::Role" and n.startswith("Shop"))
ids = {kind: next(n for n, r in template["Resources"].items() if r["Type"] == t and n.startswith(kind))
       for kind, t in [("Lister", "AWS::Lambda::Function"), ("Worker", "AWS::Lambda::Function"),
                       ("FanOut", "AWS::StepFunctions::StateMachine"),
                       ("FanOutLogs", "AWS::Logs::LogGroup")]}
fan_out_role = template["Resources"][ids["FanOut"]]["Properties"]["RoleArn"]["Fn::GetAtt"][0]


def named(value):
    """CDK's logical ids (with their hash suffixes) as Lister, Worker, FanOut and FanOutLogs."""
    text = json.dumps(value)
    for kind, logical_id in ids.items():
        text = text.replace(logical_id, kind)
    return json.loads(text)


out = {}
for name, res in template["Resources"].items():
    props = res.get("Properties", {})
    trust = props.get("AssumeRolePolicyDocument", {})
    if res["Type"] == "AWS::IAM::Role" and "scheduler.amazonaws.com" in json.dumps(trust):
        out["scheduler_role_trust"] = trust
    if res["Type"] == "AWS::Lambda::EventInvokeConfig":
        out["event_invoke_config"] = props
    if res["Type"] == "AWS::IAM::Policy" and "sqs:SendMessage" in json.dumps(props):
        out["function_destination_statements"] = props["PolicyDocument"]["Statement"]
    if res["Type"] == "AWS::IAM::Policy" and props.get("Roles") == [{"Ref": shop_id}]:
        # The door's logical id as "Door": CDK adds a hash suffix.
        statements = json.dumps(props["PolicyDocument"]["Statement"]).replace(door_id, "Door")
        out["door_invoke_statements"] = json.loads(statements)
    if name == door_id:
        out["door_reserved_concurrency"] = props["ReservedConcurrentExecutions"]
    if res["Type"] == "AWS::KMS::Key":
        out["alarm_key_policy"] = props["KeyPolicy"]
    if res["Type"] == "AWS::SNS::TopicPolicy":
        out["alarm_topic_policy"] = props["PolicyDocument"]
    if res["Type"] == "AWS::IAM::Policy" and props.get("Roles") == [{"Ref": fan_out_role}]:
        statements = props["PolicyDocument"]["Statement"]
        out["fan_out_invoke_statements"] = named(
            [s for s in statements if s["Action"] == "lambda:InvokeFunction"])
        out["fan_out_log_statements"] = [s for s in statements if "logs:" in json.dumps(s["Action"])]
    if res["Type"] == "AWS::IAM::Policy" and "states:StartExecution" in json.dumps(props):
        out["fan_out_start_statements"] = named(props["PolicyDocument"]["Statement"])
    if name == ids["Worker"]:
        out["worker_reserved_concurrency"] = props["ReservedConcurrentExecutions"]
    if name == ids["FanOut"]:
        out["fan_out_type"] = props["StateMachineType"]
        out["fan_out_logging"] = named(props["LoggingConfiguration"])
        # The definition is an Fn::Join of text and ARNs: its text, the ARNs as their ids.
        parts = props["DefinitionString"]["Fn::Join"][1]
        text = "".join(p if isinstance(p, str) else named(p).get("Fn::GetAtt", ["aws"])[0]
                       for p in parts)
        definition = json.loads(text)
        out["fan_out_lambda_retry"] = definition["States"]["ListTenants"]["Retry"]
        out["fan_out_map"] = {k: v for k, v in definition["States"]["RunEachTenant"].items()
                              if k in ("Type", "MaxConcurrency", "ItemsPath", "ItemSelector")}
print(json.dumps(out, indent=1, sort_keys=True))
