//! What the SAM translator generates from `template.yaml` — the CloudFormation `sam deploy`
//! submits — read as a deployer would: `scripts/test.sh` runs `scripts/sam-transform.py`
//! (the `aws-sam-translator` library, offline) and these tests read its JSON.

use regex::Regex;
use serde_json::{json, Value};

use crate::common::test_env;

fn generated() -> Value {
    let path = test_env("UNRESERVER_TEST_SAM_JSON");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    let r = &t["Resources"][name];
    assert!(r.is_object(), "no resource {name}");
    r
}

/// Every statement of a role's inline policies, each with the condition it is under (an
/// `Fn::If` branch counts as present, under its condition).
fn conditioned_statements(role: &Value) -> Vec<(Option<String>, Value)> {
    let unwrap = |v: &Value| match v.get("Fn::If") {
        Some(branches) => (
            branches[0].as_str().map(str::to_string),
            branches[1].clone(),
        ),
        None => (None, v.clone()),
    };
    let mut out = Vec::new();
    for policy in role["Properties"]["Policies"].as_array().unwrap() {
        let (policy_condition, policy) = unwrap(policy);
        for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            let (condition, statement) = unwrap(statement);
            out.push((condition.or(policy_condition.clone()), statement));
        }
    }
    out
}

fn statements(role: &Value) -> Vec<Value> {
    conditioned_statements(role)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

fn actions(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_string()).collect(),
        other => panic!("action {other}"),
    }
}

#[test]
fn the_function_role_is_scoped_to_its_log_group_secret_and_failure_queue() {
    let t = generated();
    let function = resource(&t, "Function");
    assert_eq!(
        function["Properties"]["Role"],
        json!({"Fn::GetAtt": ["FunctionRole", "Arn"]})
    );
    let role = resource(&t, "FunctionRole");
    assert!(
        role["Properties"]["ManagedPolicyArns"].is_null(),
        "no broad managed policy"
    );
    let mut granted = Vec::new();
    for (condition, s) in conditioned_statements(role) {
        assert_eq!(s["Effect"], "Allow");
        granted.extend(actions(&s));
        let resource = &s["Resource"];
        for action in actions(&s) {
            match action.as_str() {
                "rds-db:connect" => {
                    assert_eq!(condition.as_deref(), Some("IsIam"));
                    let arn = resource["Fn::Sub"].as_str().unwrap();
                    assert!(arn.ends_with(":dbuser:${DbResourceId}/${DbUser}"), "{arn}");
                }
                "logs:CreateLogStream" | "logs:PutLogEvents" => {
                    assert_eq!(resource, &json!({"Fn::GetAtt": ["LogGroup", "Arn"]}))
                }
                "secretsmanager:GetSecretValue" => {
                    assert_eq!(resource, &json!({"Fn::Sub": "${DbSecretArn}"}))
                }
                "kms:Decrypt" => {
                    assert_eq!(resource, &json!({"Ref": "DbSecretKmsKeyArn"}));
                    assert!(s["Condition"]["StringEquals"]["kms:ViaService"].is_object());
                }
                "events:PutEvents" => {
                    assert_eq!(condition.as_deref(), Some("HasEventBus"));
                    let arn = resource["Fn::Sub"].as_str().unwrap();
                    assert_eq!(
                        arn,
                        "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}"
                    );
                }
                "sqs:SendMessage" => {
                    assert_eq!(resource, &json!({"Fn::GetAtt": ["FailedRunsQueue", "Arn"]}))
                }
                a if a.starts_with("ec2:") => {
                    // Lambda's VPC network interfaces: IAM offers no resource to scope them.
                    assert_eq!(resource, "*");
                    assert_eq!(s["Sid"], "NetworkInterfacesInTheVpc");
                }
                other => panic!("unexpected permission {other}"),
            }
        }
    }
    for needed in [
        "events:PutEvents",
        "rds-db:connect",
        "secretsmanager:GetSecretValue",
    ] {
        assert!(
            granted.iter().any(|a| a == needed),
            "{needed} is not granted"
        );
    }
    let trust = &role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "lambda.amazonaws.com");
}

#[test]
fn failed_runs_go_to_a_queue_with_an_alarm_and_are_never_retried_onto_the_next_run() {
    let t = generated();
    let config = &resource(&t, "FunctionEventInvokeConfig")["Properties"];
    assert_eq!(config["FunctionName"], json!({"Ref": "Function"}));
    assert_eq!(config["MaximumRetryAttempts"], 0);
    // Older events go to the destination before the next run is due (the shortest interval).
    assert!(config["MaximumEventAgeInSeconds"].as_i64().unwrap() < 300);
    assert_eq!(
        config["DestinationConfig"]["OnFailure"]["Destination"],
        json!({"Fn::GetAtt": ["FailedRunsQueue", "Arn"]})
    );
    let alarm = &resource(&t, "FailedRunsAlarm")["Properties"];
    assert_eq!(alarm["MetricName"], "ApproximateNumberOfMessagesVisible");
    assert_eq!(
        alarm["Dimensions"][0]["Value"],
        json!({"Fn::GetAtt": ["FailedRunsQueue", "QueueName"]})
    );
    let dropped = &resource(&t, "AsyncEventsDroppedAlarm")["Properties"];
    assert_eq!(
        (
            dropped["Namespace"].as_str(),
            dropped["MetricName"].as_str()
        ),
        (Some("AWS/Lambda"), Some("AsyncEventsDropped"))
    );
}

#[test]
fn the_schedule_invokes_the_function_through_its_own_guarded_role() {
    let t = generated();
    let schedules: Vec<&Value> = t["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == "AWS::Scheduler::Schedule")
        .collect();
    assert_eq!(schedules.len(), 1);
    let p = &schedules[0]["Properties"];
    assert_eq!(
        p["Name"]["Fn::Join"][1][0], "unreserver",
        "a name unique per stack"
    );
    assert_eq!(
        p["ScheduleExpression"],
        json!({"Fn::Sub": "rate(${RunIntervalMinutes} minutes)"})
    );
    let target = &p["Target"];
    assert_eq!(target["Arn"], json!({"Fn::GetAtt": ["Function", "Arn"]}));
    assert_eq!(
        target["RoleArn"],
        json!({"Fn::GetAtt": ["SchedulerRole", "Arn"]})
    );
    assert_eq!(
        target["DeadLetterConfig"]["Arn"],
        json!({"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]})
    );
    let input: Value = serde_json::from_str(target["Input"].as_str().unwrap()).unwrap();
    unreserver::parse_payload(&input).unwrap();

    let role = resource(&t, "SchedulerRole");
    let trust = &role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "scheduler.amazonaws.com");
    assert_eq!(
        trust["Condition"]["StringEquals"]["aws:SourceAccount"],
        json!({"Ref": "AWS::AccountId"})
    );
    assert!(trust["Condition"]["ArnLike"]["aws:SourceArn"].is_object());
    for s in statements(role) {
        match actions(&s)[..] {
            [ref a] if a == "lambda:InvokeFunction" => {
                assert_eq!(s["Resource"][0], json!({"Fn::GetAtt": ["Function", "Arn"]}))
            }
            [ref a] if a == "sqs:SendMessage" => assert_eq!(
                s["Resource"],
                json!({"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]})
            ),
            ref other => panic!("unexpected scheduler permission {other:?}"),
        }
    }
}

#[test]
fn alarms_notify_through_a_topic_whose_key_admits_cloudwatch() {
    let t = generated();
    let topic = &resource(&t, "AlarmTopic")["Properties"];
    assert_eq!(
        topic["KmsMasterKeyId"],
        json!({"Ref": "AlarmKey"}),
        "not alias/aws/sns"
    );
    let key = &resource(&t, "AlarmKey")["Properties"];
    assert_eq!(key["EnableKeyRotation"], true);
    let statements = key["KeyPolicy"]["Statement"].as_array().unwrap();
    let cloudwatch = statements
        .iter()
        .find(|s| s["Principal"]["Service"] == "cloudwatch.amazonaws.com")
        .expect("the key policy admits CloudWatch");
    let granted = actions(cloudwatch);
    assert!(granted.contains(&"kms:Decrypt".to_string()));
    assert!(granted.contains(&"kms:GenerateDataKey*".to_string()));
    assert!(
        statements.iter().any(|s| s["Action"] == "kms:*"
            && s["Principal"]["AWS"]["Fn::Sub"]
                .as_str()
                .is_some_and(|a| a.ends_with(":root"))),
        "the account administers the key (or it could never be changed)"
    );
    let policy = &resource(&t, "AlarmTopicPolicy")["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(policy["Principal"]["Service"], "cloudwatch.amazonaws.com");
    for (name, r) in t["Resources"].as_object().unwrap() {
        if r["Type"] == "AWS::CloudWatch::Alarm" {
            assert_eq!(
                r["Properties"]["AlarmActions"][0],
                json!({"Ref": "AlarmTopic"}),
                "{name}"
            );
        }
    }
}

#[test]
fn logs_and_metrics_survive_the_log_levels_the_template_allows() {
    let t = generated();
    let logging = &resource(&t, "Function")["Properties"]["LoggingConfig"];
    assert_eq!(logging["SystemLogLevel"], "INFO", "REPORT lines are INFO");
    assert_eq!(logging["ApplicationLogLevel"], json!({"Ref": "LogLevel"}));
    // EMF documents are INFO lines: any level above INFO would drop the metrics.
    let allowed = t["Parameters"]["LogLevel"]["AllowedValues"]
        .as_array()
        .unwrap();
    for level in allowed {
        assert!(
            ["TRACE", "DEBUG", "INFO"].contains(&level.as_str().unwrap()),
            "{level}"
        );
    }
}

#[test]
fn the_no_successful_run_window_follows_the_run_interval() {
    let t = generated();
    let allowed = t["Parameters"]["RunIntervalMinutes"]["AllowedValues"]
        .as_array()
        .unwrap();
    for minutes in allowed {
        let minutes = minutes.as_str().unwrap();
        let seconds = &t["Mappings"]["RunInterval"][minutes]["Seconds"];
        assert_eq!(
            seconds.as_i64(),
            Some(minutes.parse::<i64>().unwrap() * 60),
            "{minutes}"
        );
    }
    let alarm = &resource(&t, "NoSuccessfulRunAlarm")["Properties"];
    for m in alarm["Metrics"].as_array().unwrap() {
        if let Some(period) = m["MetricStat"].get("Period") {
            assert_eq!(
                period,
                &json!({"Fn::FindInMap": ["RunInterval", {"Ref": "RunIntervalMinutes"}, "Seconds"]})
            );
        }
    }
    assert_eq!(alarm["EvaluationPeriods"], 3);
    assert_eq!(alarm["TreatMissingData"], "breaching");
}

/// CloudFormation matches `AllowedPattern` against the whole value.
fn full_match(pattern: &str, value: &str) -> bool {
    Regex::new(&format!("^(?:{pattern})$"))
        .unwrap()
        .is_match(value)
}

#[test]
fn parameters_refuse_what_would_deploy_and_then_fail() {
    let t = generated();
    let secret = t["Parameters"]["DbSecretArn"]["AllowedPattern"]
        .as_str()
        .unwrap();
    assert!(full_match(
        secret,
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/shop-db-AbCdEf"
    ));
    assert!(!full_match(
        secret,
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/shop-db"
    ));
    assert!(!full_match(secret, "prod/shop-db"));
    let key = t["Parameters"]["DbSecretKmsKeyArn"]["AllowedPattern"]
        .as_str()
        .unwrap();
    assert!(full_match(key, ""));
    assert!(full_match(
        key,
        "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    ));
    assert!(!full_match(key, "alias/shop-secrets"));
    assert!(!full_match(
        key,
        "arn:aws:kms:eu-west-1:123456789012:alias/shop-secrets"
    ));
    assert!(!full_match(key, "1234abcd-12ab-34cd-56ef-1234567890ab"));
    let bus = t["Parameters"]["EventBusName"]["AllowedPattern"]
        .as_str()
        .unwrap();
    assert!(full_match(bus, "") && full_match(bus, "shop-events"));
    // An ARN would make the permission's ARN wrong: a name only.
    assert!(!full_match(
        bus,
        "arn:aws:events:eu-west-1:123456789012:event-bus/shop"
    ));
    // No resource name built from the stack name can pass its limit.
    assert!(resource(&t, "Function")["Properties"]["FunctionName"].is_null());
    // The RDS CA regions: the template takes exactly what the function would accept.
    let regions = t["Parameters"]["DbRdsCaRegions"]["AllowedPattern"]
        .as_str()
        .unwrap();
    for value in [
        "",
        "all",
        "eu-west-1",
        "eu-west-1,us-gov-west-1",
        "eu-west-1, us-east-1",
        "EU-WEST-1",
        "eu-west",
        "eu-west-1,",
        "ALL",
    ] {
        let function_accepts = value.is_empty() || unreserver::RdsCaRegions::parse(value).is_ok();
        let template_accepts = full_match(regions, value);
        if value.contains(' ') || value == "ALL" {
            // Looser in the function (trimmed, any case of `all`); the template stays strict.
            assert!(function_accepts && !template_accepts, "{value:?}");
        } else {
            assert_eq!(template_accepts, function_accepts, "{value:?}");
        }
    }
}

#[test]
fn queries_are_scoped_by_stack_and_the_dashboard_shows_the_week() {
    let t = generated();
    for name in ["PerformanceReportQuery", "FailuresQuery", "ContentionQuery"] {
        let n = resource(&t, name)["Properties"]["Name"]["Fn::Sub"]
            .as_str()
            .unwrap();
        assert!(n.starts_with("${AWS::StackName}/"), "{name}: {n}");
    }
    let body = resource(&t, "Dashboard")["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .unwrap();
    assert!(body.contains(r#""start": "-P7D""#));
}
