//! What the SAM translator generates from `template.yaml` — the CloudFormation `sam deploy`
//! submits — read as a deployer would: `scripts/test.sh` runs `scripts/sam-transform.py`
//! (the `aws-sam-translator` library, offline) and these tests read its JSON.

use regex::Regex;
use serde_json::{json, Value};

use crate::common::test_env;

pub(crate) fn generated() -> Value {
    let path = test_env("UNRESERVER_TEST_SAM_JSON");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    let r = &t["Resources"][name];
    assert!(r.is_object(), "no resource {name}");
    r
}

/// Every statement of a role's inline policies, each with the condition it is under (an
/// `Fn::If` branch counts as present, under its condition).
pub(crate) fn conditioned_statements(role: &Value) -> Vec<(Option<String>, Value)> {
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

pub(crate) fn statements(role: &Value) -> Vec<Value> {
    conditioned_statements(role)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

pub(crate) fn actions(statement: &Value) -> Vec<String> {
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
                    let arn = resource["Fn::Sub"][0].as_str().unwrap();
                    assert!(arn.ends_with(":dbuser:${DbResourceId}/${DbUser}"), "{arn}");
                    // In the database's region (DbRegion), not always the function's.
                    assert!(arn.contains(":rds-db:${Region}:"), "{arn}");
                    assert_eq!(
                        resource["Fn::Sub"][1]["Region"],
                        json!({"Fn::If": ["HasDbRegion", {"Ref": "DbRegion"}, {"Ref": "AWS::Region"}]})
                    );
                }
                "logs:CreateLogStream" | "logs:PutLogEvents" => {
                    assert_eq!(resource, &json!({"Fn::GetAtt": ["LogGroup", "Arn"]}))
                }
                "secretsmanager:GetSecretValue" => match condition.as_deref() {
                    Some("HasCaSecret") => assert_eq!(resource, &json!({"Ref": "DbCaSecretArn"})),
                    // The tenants' own secrets, under their prefix only.
                    Some("HasTenantSecretPrefix") => assert_eq!(
                        resource["Fn::Sub"],
                        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${TenantSecretPrefix}*"
                    ),
                    _ => assert_eq!(resource, &json!({"Fn::Sub": "${DbSecretArn}"})),
                },
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
                // IAM offers no resource for listing secrets: granted only when the tenants
                // are found by a secret name prefix.
                "secretsmanager:ListSecrets" => {
                    assert_eq!(condition.as_deref(), Some("HasTenantSecretPrefix"));
                    assert_eq!(resource, "*");
                    assert_eq!(
                        t["Conditions"]["HasTenantSecretPrefix"],
                        json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "TenantSecretPrefix"}, ""]}]})
                    );
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
        "secretsmanager:ListSecrets",
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
    // Follow mode: at AWS's lowest allowed age (60 s), so a queued minute is never started
    // late beside the next minute's (MaximumEventAgeInSeconds: 60 to 21600).
    assert_eq!(
        config["MaximumEventAgeInSeconds"],
        json!({"Fn::If": ["IsFollow", 60, 240]})
    );
    assert_eq!(
        resource(&t, "FunctionSchedule")["Properties"]["Target"]["RetryPolicy"]
            ["MaximumEventAgeInSeconds"],
        json!({"Fn::If": ["IsFollow", 60, 240]})
    );
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
    // A failure that could not reach the queue is the one really lost: alarmed. Every failed
    // run also counts in AsyncEventsDropped once a destination is set ("If you configure a
    // dead-letter queue (DLQ) or OnFailure destination, then events are sent there before
    // they're dropped", Lambda Developer Guide): no alarm repeats RunFailedAlarm with it.
    let lost = &resource(&t, "DestinationDeliveryFailuresAlarm")["Properties"];
    assert_eq!(
        (lost["Namespace"].as_str(), lost["MetricName"].as_str()),
        (Some("AWS/Lambda"), Some("DestinationDeliveryFailures"))
    );
    assert!(
        !t["Resources"]
            .to_string()
            .contains("\"AsyncEventsDropped\""),
        "an alarm or widget still watches AsyncEventsDropped"
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
    // The release's, the nightly reconcile's, the nightly purge's and the tenant fan-out's
    // (under their conditions), in the same group; the purge's and the fan-out's through roles
    // of their own, which may start only their own target.
    assert_eq!(schedules.len(), 4);
    for s in &schedules {
        assert_eq!(
            s["Properties"]["GroupName"],
            json!({"Ref": "ScheduleGroup"})
        );
        let target = &s["Properties"]["Target"]["Arn"];
        let role = if target["Fn::GetAtt"][0] == "PurgeFunction" {
            "PurgeSchedulerRole"
        } else if target["Ref"] == "TenantFanOutStateMachine" {
            "FanOutSchedulerRole"
        } else {
            "SchedulerRole"
        };
        assert_eq!(
            s["Properties"]["Target"]["RoleArn"],
            json!({"Fn::GetAtt": [role, "Arn"]})
        );
    }
    let nightly = resource(&t, "ReconcileSchedule");
    assert_eq!(nightly["Condition"], "HasNightlyReconcile");
    for (input, apply) in [(1, true), (2, false)] {
        let text = nightly["Properties"]["Target"]["Input"]["Fn::If"][input]
            .as_str()
            .unwrap();
        match unreserver::parse_payload(&serde_json::from_str(text).unwrap()).unwrap() {
            unreserver::Request::Reconcile(r) => assert_eq!(r.apply, apply),
            other => panic!("{other:?}"),
        }
    }
    let p = &resource(&t, "FunctionSchedule")["Properties"];
    assert_eq!(
        p["Name"]["Fn::Join"][1][0], "unreserver",
        "a name unique per stack"
    );
    assert_eq!(
        p["ScheduleExpression"],
        json!({"Fn::FindInMap": ["ScheduleRate", {"Ref": "ReleaseMode"}, {"Ref": "RunIntervalMinutes"}]})
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
    for branch in [1, 2] {
        let text = target["Input"]["Fn::If"][branch].as_str().unwrap();
        // Scheduler fills in the follow's scheduled time.
        let text = text.replace("<aws.scheduler.scheduled-time>", "2022-03-22T18:59:43Z");
        unreserver::parse_payload(&serde_json::from_str(&text).unwrap()).unwrap();
    }

    // The schedule is in the stack's own group, and the role trusts that group only: "The
    // value of aws:SourceArn must be your EventBridge Scheduler schedule group ARN [...] Do not
    // scope the aws:SourceArn statement to a specific schedule or a schedule name prefix. The
    // ARN you specify must be a schedule group." (EventBridge Scheduler User Guide, "Confused
    // deputy prevention".) A schedule ARN there and Scheduler cannot assume the role: no run.
    assert_eq!(p["GroupName"], json!({"Ref": "ScheduleGroup"}));
    assert_eq!(
        resource(&t, "ScheduleGroup")["Type"],
        "AWS::Scheduler::ScheduleGroup"
    );
    let role = resource(&t, "SchedulerRole");
    let trust = &role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "scheduler.amazonaws.com");
    assert_eq!(
        trust["Condition"],
        json!({"StringEquals": {
            "aws:SourceAccount": {"Ref": "AWS::AccountId"},
            "aws:SourceArn": {"Fn::GetAtt": ["ScheduleGroup", "Arn"]},
        }})
    );
    // AWS's CDK, offline (scripts/cdk-oracle.py): the same operator, the same keys, the
    // group's ARN.
    let oracle: Value = serde_json::from_str(include_str!("../fixtures/cdk-oracle.json")).unwrap();
    let cdk = &oracle["scheduler_role_trust"]["Statement"][0];
    assert_eq!(cdk["Principal"], trust["Principal"]);
    assert_eq!(cdk["Action"], trust["Action"]);
    let keys = |c: &Value| -> Vec<(String, Vec<String>)> {
        c.as_object()
            .unwrap()
            .iter()
            .map(|(op, m)| (op.clone(), m.as_object().unwrap().keys().cloned().collect()))
            .collect()
    };
    assert_eq!(keys(&cdk["Condition"]), keys(&trust["Condition"]));
    assert_eq!(
        cdk["Condition"]["StringEquals"]["aws:SourceArn"]["Fn::GetAtt"][1], "Arn",
        "CDK scopes the trust to its schedule group's ARN"
    );
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

/// In follow mode the schedule's input is a follow of 60 s, which the function accepts, within
/// a 75 s timeout that leaves the deadline margin; the duration alarm sits between the two.
#[test]
fn follow_mode_invokes_every_minute_to_follow_for_sixty_seconds() {
    let t = generated();
    assert_eq!(
        t["Conditions"]["IsFollow"],
        json!({"Fn::Equals": [{"Ref": "ReleaseMode"}, "follow"]})
    );
    let p = &resource(&t, "FunctionSchedule")["Properties"];
    let input = &p["Target"]["Input"]["Fn::If"];
    assert_eq!(input[0], "IsFollow");
    // Each event carries its scheduled time, which Scheduler fills in: the follow's minute.
    let text = input[1].as_str().unwrap();
    assert!(
        text.contains(r#""scheduled_time": "<aws.scheduler.scheduled-time>""#),
        "{text}"
    );
    let text = text.replace("<aws.scheduler.scheduled-time>", "2022-03-22T18:59:43Z");
    let follow: Value = serde_json::from_str(&text).unwrap();
    let seconds = match unreserver::parse_payload(&follow).unwrap() {
        unreserver::Request::Follow(f) => {
            assert_eq!(f.source(), "schedule");
            let scheduled = f.scheduled_time.unwrap();
            assert_eq!(i64::from(scheduled.minute), 1_647_975_583 / 60);
            f.seconds.unwrap()
        }
        other => panic!("{other:?}"),
    };
    let interval: Value = serde_json::from_str(input[2].as_str().unwrap()).unwrap();
    assert!(matches!(
        unreserver::parse_payload(&interval).unwrap(),
        unreserver::Request::Run(_)
    ));
    let f = &resource(&t, "Function")["Properties"];
    assert_eq!(f["Timeout"], json!({"Fn::If": ["IsFollow", 75, 120]}));
    let margin = unreserver::config::LambdaConfig::from_lookup(&|_| None)
        .unwrap()
        .deadline_margin
        .as_secs();
    assert!(
        u64::from(seconds) + margin <= 75,
        "{seconds} s + {margin} s margin"
    );
    let alarm = &resource(&t, "DurationNearTimeoutAlarm")["Properties"];
    let threshold = &alarm["Threshold"]["Fn::If"];
    assert_eq!(threshold[0], "IsFollow");
    let follow_ms = threshold[1].as_i64().unwrap();
    assert!(
        follow_ms > i64::from(seconds) * 1000 && follow_ms < 75_000,
        "above a normal follow, below the timeout: {follow_ms}"
    );
    assert_eq!(threshold[2], 96000);
}

/// Every alarm's period, in each of its metrics, in the resolved form it takes for one
/// interval.
fn alarm_periods(t: &Value) -> Vec<(String, Value)> {
    let mut periods = Vec::new();
    for (name, r) in t["Resources"].as_object().unwrap() {
        if r["Type"] != "AWS::CloudWatch::Alarm" {
            continue;
        }
        let p = &r["Properties"];
        if !p["Period"].is_null() {
            periods.push((name.clone(), p["Period"].clone()));
        }
        for m in p["Metrics"].as_array().into_iter().flatten() {
            if let Some(period) = m["MetricStat"].get("Period") {
                periods.push((name.clone(), period.clone()));
            }
        }
    }
    periods
}

#[test]
fn every_alarm_follows_the_run_interval() {
    let t = generated();
    let allowed = t["Parameters"]["RunIntervalMinutes"]["AllowedValues"]
        .as_array()
        .unwrap();
    assert!(allowed.contains(&json!("1")), "the 1-minute interval");
    let interval = json!({"Fn::FindInMap":
        ["AlarmPeriod", {"Ref": "ReleaseMode"}, {"Ref": "RunIntervalMinutes"}]});
    // The door's alarm watches the shop's calls, which come at any time: its own 5-minute
    // windows (`the_shop_can_invoke_the_door_and_nothing_else`).
    let periods: Vec<_> = alarm_periods(&t)
        .into_iter()
        .filter(|(name, _)| name != "DoorErrorRateAlarm")
        .collect();
    assert!(periods.len() >= 15, "{periods:?}");
    for (name, period) in &periods {
        assert_eq!(
            period, &interval,
            "{name}: its period must be the run interval"
        );
    }
    for minutes in allowed {
        let minutes = minutes.as_str().unwrap();
        let n: i64 = minutes.parse().unwrap();
        let (period, rate) = (
            &t["Mappings"]["AlarmPeriod"],
            &t["Mappings"]["ScheduleRate"],
        );
        assert_eq!(
            period["interval"][minutes].as_i64(),
            Some(n * 60),
            "{minutes}"
        );
        // Scheduler's rate syntax: "rate(1 minute)", "rate(5 minutes)".
        let unit = if n == 1 { "minute" } else { "minutes" };
        assert_eq!(
            rate["interval"][minutes],
            format!("rate({n} {unit})"),
            "{minutes}"
        );
        // Follow mode: an invocation every minute, whatever the interval.
        assert_eq!(period["follow"][minutes].as_i64(), Some(60), "{minutes}");
        assert_eq!(rate["follow"][minutes], "rate(1 minute)", "{minutes}");
        for (name, r) in t["Resources"].as_object().unwrap() {
            if r["Type"] != "AWS::CloudWatch::Alarm" {
                continue;
            }
            // CloudWatch: the evaluation range (period × evaluation periods) is at most a day.
            let periods = r["Properties"]["EvaluationPeriods"].as_i64().unwrap();
            assert!(n * 60 * periods <= 86_400, "{name} at {minutes} minutes");
        }
    }
    let alarm = &resource(&t, "NoSuccessfulRunAlarm")["Properties"];
    assert_eq!(alarm["EvaluationPeriods"], 3);
    assert_eq!(alarm["TreatMissingData"], "breaching");
    // A count over the last 24 hours, emitted once a run: one point an interval keeps it in
    // ALARM while it holds, and a run that failed (no point) changes nothing.
    for name in [
        "PaidAfterReleaseAlarm",
        "OldestDueAgeAlarm",
        "OldestDeferredAgeAlarm",
        "MissingIndexesAlarm",
    ] {
        assert_eq!(
            resource(&t, name)["Properties"]["TreatMissingData"],
            "ignore",
            "{name}"
        );
    }
}

/// The few intrinsic functions the metric identities use, resolved for one stack: its name
/// and its parameters (the template's defaults under `overrides`).
struct Stack<'a> {
    t: &'a Value,
    name: &'a str,
    overrides: &'a [(&'a str, &'a str)],
}

impl Stack<'_> {
    fn parameter(&self, name: &str) -> String {
        if name == "AWS::StackName" {
            return self.name.to_string();
        }
        if let Some((_, v)) = self.overrides.iter().find(|(k, _)| *k == name) {
            return v.to_string();
        }
        match &self.t["Parameters"][name]["Default"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn condition(&self, c: &Value) -> bool {
        if let Some(name) = c.as_str() {
            return self.condition(&self.t["Conditions"][name]);
        }
        if let Some(inner) = c.get("Fn::Not") {
            return !self.condition(&inner[0]);
        }
        if let Some(pair) = c.get("Fn::Equals") {
            return self.resolve(&pair[0]) == self.resolve(&pair[1]);
        }
        if let Some(name) = c.get("Condition") {
            return self.condition(name);
        }
        panic!("unresolved condition {c}")
    }

    fn resolve(&self, v: &Value) -> String {
        if let Some(s) = v.as_str() {
            return s.to_string();
        }
        if let Some(name) = v.get("Ref").and_then(Value::as_str) {
            return self.parameter(name);
        }
        if let Some(args) = v.get("Fn::If") {
            let branch = if self.condition(&args[0]) {
                &args[1]
            } else {
                &args[2]
            };
            return self.resolve(branch);
        }
        panic!("unresolved value {v}")
    }

    /// (namespace, service) the function's metrics carry.
    fn emits(&self) -> (String, String) {
        let vars = &resource(self.t, "Function")["Properties"]["Environment"]["Variables"];
        (
            self.resolve(&vars["POWERTOOLS_METRICS_NAMESPACE"]),
            self.resolve(&vars["POWERTOOLS_SERVICE_NAME"]),
        )
    }

    /// (alarm, namespace, service) of every alarm on the function's own metrics.
    fn watches(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (name, r) in self.t["Resources"].as_object().unwrap() {
            let p = &r["Properties"];
            let metrics: Vec<&Value> = if p["MetricName"].is_string() {
                vec![p]
            } else {
                p["Metrics"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| !m["MetricStat"].is_null())
                    .map(|m| &m["MetricStat"]["Metric"])
                    .collect()
            };
            for m in metrics {
                let namespace = self.resolve(&m["Namespace"]);
                if namespace.starts_with("AWS/") {
                    continue;
                }
                for d in m["Dimensions"].as_array().into_iter().flatten() {
                    assert_eq!(d["Name"], "service", "{name}");
                    out.push((name.clone(), namespace.clone(), self.resolve(&d["Value"])));
                }
            }
        }
        out
    }
}

#[test]
fn two_stacks_in_one_account_never_feed_each_others_alarms() {
    let t = generated();
    let staging = Stack {
        t: &t,
        name: "shop-staging",
        overrides: &[],
    };
    let production = Stack {
        t: &t,
        name: "shop-production",
        overrides: &[],
    };
    for (own, other) in [(&staging, &production), (&production, &staging)] {
        let watched = own.watches();
        assert!(watched.len() >= 9, "{watched:?}");
        let (namespace, service) = own.emits();
        assert_eq!(
            service, own.name,
            "the service dimension defaults to the stack's name"
        );
        for (alarm, ns, svc) in &watched {
            assert_eq!(
                (ns, svc),
                (&namespace, &service),
                "{alarm} watches its own function"
            );
            assert_ne!(
                (ns.clone(), svc.clone()),
                other.emits(),
                "{alarm} of {} watches {}",
                own.name,
                other.name
            );
        }
    }
    // A service name given explicitly is used as given, by the function and the alarms alike.
    let named = Stack {
        t: &t,
        name: "x",
        overrides: &[("ServiceName", "shop-eu")],
    };
    assert_eq!(named.emits().1, "shop-eu");
    assert!(named.watches().iter().all(|(_, _, svc)| svc == "shop-eu"));
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
    // The metrics' namespace and service: the template takes exactly what the function would
    // accept (an empty service name means the stack's name, which the function accepts).
    let accepts = |name: &str, value: &str| {
        unreserver::Config::from_lookup(|n| match n {
            "DATABASE_URL" => Some("postgres://u@h/d".into()),
            n if n == name => Some(value.to_string()),
            _ => None,
        })
        .is_ok()
    };
    let long = "n".repeat(255);
    let too_long = "n".repeat(256);
    for (parameter, setting) in [
        ("MetricsNamespace", "POWERTOOLS_METRICS_NAMESPACE"),
        ("ServiceName", "POWERTOOLS_SERVICE_NAME"),
    ] {
        let p = &t["Parameters"][parameter];
        let pattern = p["AllowedPattern"].as_str().unwrap();
        let max = p["MaxLength"].as_u64().unwrap_or(u64::MAX) as usize;
        for value in [
            "Unreserver",
            "Shop/Inventory",
            "a",
            "A",
            "AW",
            "AWS",
            "AWSx",
            "AWS:x",
            "aws/x",
            "AWS/Lambda",
            "A/x",
            "AW/x",
            "x:y",
            ":x",
            "a b",
            "é",
            "shop#1",
            &long,
            &too_long,
        ] {
            let template = full_match(pattern, value) && value.len() <= max;
            assert_eq!(template, accepts(setting, value), "{parameter} = {value:?}");
        }
        if parameter == "ServiceName" {
            assert!(full_match(pattern, ""), "empty: the stack's name");
        }
    }
    // The database's region: the same, both ways.
    let region = t["Parameters"]["DbRegion"]["AllowedPattern"]
        .as_str()
        .unwrap();
    for value in [
        "eu-west-1",
        "us-gov-west-1",
        "cn-north-1",
        "x-y-1",
        "eu-west",
        "EU-WEST-1",
        "eu--1",
        "eu-west-1a",
        "1-2-3",
    ] {
        assert_eq!(
            full_match(region, value),
            accepts("DB_REGION", value),
            "DbRegion = {value:?}"
        );
    }
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
    let body = resource(&t, "Dashboard")["Properties"]["DashboardBody"]["Fn::Sub"][0]
        .as_str()
        .unwrap();
    assert!(body.contains(r#""start": "-P7D""#));
}

/// The failures query finds the function's error lines and Lambda's own records of a timeout
/// and of a failed init (the function writes nothing then), in the JSON log format the template
/// sets and in text: each sample record is matched by a clause of the query, a normal line by
/// none. The clauses are read from the query itself: its `/regex/`es against the whole record,
/// `level = "ERROR"`, and `type like /^platform\./` with a `record.status` it lists.
#[test]
fn the_failures_query_finds_timeouts_and_init_failures() {
    let t = generated();
    let query = resource(&t, "FailuresQuery")["Properties"]["QueryString"]
        .as_str()
        .unwrap()
        .to_string();
    let filter = query.split("| fields").next().unwrap();
    let regexes: Vec<Regex> = Regex::new(r"/((?:[^/\\]|\\.)+)/")
        .unwrap()
        .captures_iter(filter)
        .map(|c| Regex::new(&c[1]).unwrap())
        .collect();
    let statuses: Vec<String> = Regex::new(r#"record\.status = "(\w+)""#)
        .unwrap()
        .captures_iter(filter)
        .map(|c| c[1].to_string())
        .collect();
    assert!(filter.contains(r#"level = "ERROR""#));
    let matches = |record: &str| {
        let json: Value = serde_json::from_str(record).unwrap_or(Value::Null);
        let platform = json["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("platform."))
            && json["record"]["status"]
                .as_str()
                .is_some_and(|s| statuses.iter().any(|x| x == s));
        json["level"] == "ERROR"
            || platform
            || regexes
                .iter()
                .filter(|r| r.as_str() != r"^platform\.")
                .any(|r| r.is_match(record))
    };
    let failures = [
        // Lambda's JSON log format: a timeout, a failed init, a runtime that exited.
        r#"{"time":"2026-12-02T04:00:03.000Z","type":"platform.report","record":{"requestId":"r-1","metrics":{"durationMs":120000.0},"status":"timeout"}}"#,
        r#"{"time":"2026-12-02T04:00:00.500Z","type":"platform.initReport","record":{"initializationType":"on-demand","phase":"init","status":"error","errorType":"Runtime.ExitError"}}"#,
        r#"{"time":"2026-12-02T04:00:00.600Z","type":"platform.runtimeDone","record":{"requestId":"r-2","status":"failure","errorType":"Runtime.ExitError"}}"#,
        // The text format.
        "2026-12-02T04:00:03.000Z r-1 Task timed out after 120.00 seconds",
        "INIT_REPORT Init Duration: 10000.00 ms Phase: init Status: timeout",
        "INIT_REPORT Init Duration: 35.12 ms Phase: init Status: error Error Type: Runtime.ExitError",
        // The function's own error line.
        r#"{"timestamp":"2026-12-02T04:00:01Z","level":"ERROR","fields":{"message":"run failed"},"error_type":"TooSlow"}"#,
    ];
    for record in failures {
        assert!(matches(record), "the failures query misses {record}");
    }
    for record in [
        r#"{"time":"2026-12-02T04:00:03.000Z","type":"platform.report","record":{"requestId":"r-3","metrics":{"durationMs":812.0},"status":"success"}}"#,
        r#"{"timestamp":"2026-12-02T04:00:01Z","level":"INFO","fields":{"message":"run finished"}}"#,
    ] {
        assert!(!matches(record), "the failures query takes {record}");
    }
}

/// The template against what AWS's own CDK writes for the same wiring (offline, recorded by
/// `scripts/cdk-oracle.py` in `tests/fixtures/cdk-oracle.json`): Lambda's on-failure
/// destination and its permission, and the key of the encrypted alarm topic — where CDK writes
/// too little, the AWS sentence the template follows instead.
#[test]
fn the_wiring_matches_aws_cdk_or_the_aws_sentence_it_misses() {
    let t = generated();
    let oracle: Value = serde_json::from_str(include_str!("../fixtures/cdk-oracle.json")).unwrap();

    // The invoke configuration: no retries, the event age, the queue on failure — as CDK.
    let cdk = &oracle["event_invoke_config"];
    let ours = &resource(&t, "FunctionEventInvokeConfig")["Properties"];
    assert_eq!(ours["MaximumRetryAttempts"], cdk["MaximumRetryAttempts"]);
    // The shop's door: CDK's grant_invoke allows the one action on the function's ARN and on
    // its versions and aliases (`ARN:*`); ours on the unqualified ARN alone, within CDK's (the
    // shop calls the function by name; the stack publishes no version). Its reserved
    // concurrency is the property CDK writes on the function.
    let cdk_door = oracle["door_invoke_statements"].as_array().unwrap();
    assert_eq!(cdk_door.len(), 1);
    assert_eq!(actions(&cdk_door[0]), ["lambda:InvokeFunction"]);
    assert_eq!(
        cdk_door[0]["Resource"][0],
        json!({"Fn::GetAtt": ["Door", "Arn"]})
    );
    let door_statement =
        &resource(&t, "DoorInvokePolicy")["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(actions(door_statement), actions(&cdk_door[0]));
    assert_eq!(
        door_statement["Resource"],
        json!({"Fn::GetAtt": ["DoorFunction", "Arn"]})
    );
    assert_eq!(oracle["door_reserved_concurrency"], 5);
    for function in ["Function", "DoorFunction"] {
        assert!(
            resource(&t, function)["Properties"]["ReservedConcurrentExecutions"].is_object(),
            "{function}"
        );
    }
    // Interval mode's age as CDK's; follow mode's its own (60 s, the lowest allowed).
    assert_eq!(
        ours["MaximumEventAgeInSeconds"]["Fn::If"][2],
        cdk["MaximumEventAgeInSeconds"]
    );
    assert!(cdk["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][1] == "Arn");
    assert_eq!(
        ours["DestinationConfig"]["OnFailure"]["Destination"],
        json!({"Fn::GetAtt": ["FailedRunsQueue", "Arn"]})
    );

    // The permission to deliver there: "Amazon SQS – sqs:SendMessage" (Lambda Developer Guide,
    // execution role permissions for destinations). CDK's generic grant adds two read actions
    // Lambda does not need; ours is the documented one, within CDK's.
    let cdk_actions: Vec<String> = oracle["function_destination_statements"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(actions)
        .collect();
    let role = resource(&t, "FunctionRole");
    let ours: Vec<String> = statements(role)
        .iter()
        .filter(|s| s["Resource"] == json!({"Fn::GetAtt": ["FailedRunsQueue", "Arn"]}))
        .flat_map(actions)
        .collect();
    assert_eq!(ours, ["sqs:SendMessage"]);
    assert!(
        ours.iter().all(|a| cdk_actions.contains(a)),
        "{cdk_actions:?}"
    );

    // The alarm topic's key. CDK writes only the account's statement, and alarms could then
    // never publish to the topic: "add the following statement to the key policy [...]
    // cloudwatch.amazonaws.com [...] kms:Decrypt, kms:GenerateDataKey*" (Amazon SNS Developer
    // Guide, "Enable compatibility between event sources from AWS services and encrypted
    // topics"). Ours has CDK's statement and that one.
    let cdk_key = oracle["alarm_key_policy"]["Statement"].as_array().unwrap();
    assert_eq!(cdk_key.len(), 1, "CDK's key policy changed: read it again");
    assert_eq!(cdk_key[0]["Action"], "kms:*");
    let key = resource(&t, "AlarmKey")["Properties"]["KeyPolicy"]["Statement"]
        .as_array()
        .unwrap()
        .clone();
    assert!(key
        .iter()
        .any(|s| s["Action"] == "kms:*" && s["Effect"] == "Allow"));
    assert!(key
        .iter()
        .any(|s| s["Principal"]["Service"] == "cloudwatch.amazonaws.com"));
}

/// Every function that connects as the role is bounded, and the role's `CONNECTION LIMIT` the
/// stack prints (`RoleConnectionLimit`, for `infra/role.sql`) is their sum: the scheduled
/// function's concurrency × `WORKERS` (2) + the door's × 1 + 2 for an operator's run, for
/// every combination the parameters allow.
#[test]
fn connections_are_bounded_end_to_end() {
    let t = generated();
    for (function, parameter) in [
        ("Function", "ScheduleConcurrency"),
        ("DoorFunction", "DoorConcurrency"),
        ("TenantWorkerFunction", "TenantConcurrency"),
    ] {
        assert_eq!(
            resource(&t, function)["Properties"]["ReservedConcurrentExecutions"],
            json!({"Fn::If": ["ReservesConcurrency", {"Ref": parameter}, {"Ref": "AWS::NoValue"}]}),
            "{function}"
        );
    }
    assert_eq!(
        t["Conditions"]["ReservesConcurrency"],
        json!({"Fn::Equals": [{"Ref": "ConcurrencyReservation"}, "reserved"]})
    );
    assert_eq!(
        t["Parameters"]["ConcurrencyReservation"]["Default"],
        "reserved"
    );
    let values = |name: &str| -> Vec<i64> {
        t["Parameters"][name]["AllowedValues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect()
    };
    // Two follow minutes overlap (75 s on a 60 s rate) and the nightly reconcile may join them.
    assert!(values("ScheduleConcurrency").iter().all(|n| *n >= 2));
    assert_eq!(t["Parameters"]["ScheduleConcurrency"]["Default"], "3");
    // The arithmetic holds only if a scheduled invocation opens at most two connections.
    assert_eq!(
        resource(&t, "Function")["Properties"]["Environment"]["Variables"]["WORKERS"],
        "2"
    );
    let limits = &t["Mappings"]["ConnectionLimit"];
    for schedule in values("ScheduleConcurrency") {
        for door in values("DoorConcurrency") {
            assert_eq!(
                limits[schedule.to_string()][door.to_string()].as_i64(),
                Some(schedule * 2 + door + 2),
                "ScheduleConcurrency {schedule}, DoorConcurrency {door}"
            );
        }
    }
    // With the tenant fan-out, its workers too: TenantConcurrency (the worker's reserved
    // concurrency, `the_fan_out_runs_each_tenant_on_a_worker_that_never_throttles_the_lister`)
    // × WORKERS more, looked up by the sum without them.
    let base = json!({"Fn::FindInMap":
        ["ConnectionLimit", {"Ref": "ScheduleConcurrency"}, {"Ref": "DoorConcurrency"}]});
    let output = &t["Outputs"]["RoleConnectionLimit"];
    assert_eq!(
        output["Value"],
        json!({"Fn::If": ["FansOut",
            {"Fn::FindInMap": ["FanOutConnectionLimit", {"Ref": "TenantConcurrency"}, base]},
            base]})
    );
    assert_eq!(
        resource(&t, "TenantWorkerFunction")["Properties"]["Environment"]["Variables"]["WORKERS"],
        "2"
    );
    let with_workers = &t["Mappings"]["FanOutConnectionLimit"];
    for schedule in values("ScheduleConcurrency") {
        for door in values("DoorConcurrency") {
            let without = schedule * 2 + door + 2;
            for tenants in values("TenantConcurrency") {
                assert_eq!(
                    with_workers[tenants.to_string()][without.to_string()].as_i64(),
                    Some(without + tenants * 2),
                    "ScheduleConcurrency {schedule}, DoorConcurrency {door}, TenantConcurrency {tenants}"
                );
            }
        }
    }
    assert!(output["Description"]
        .as_str()
        .unwrap()
        .contains("-v connection_limit="));
    assert!(include_str!("../../infra/role.sql").contains(":{?connection_limit}"));
}

/// The shop's principal may invoke the door and nothing else; the door runs the same code and
/// settings as the scheduled function with `SHOP_DOOR=1`, is called synchronously only, and
/// its alarm watches the rate of failed calls, not each one.
#[test]
fn the_shop_can_invoke_the_door_and_nothing_else() {
    let t = generated();
    let policy = resource(&t, "DoorInvokePolicy");
    assert_eq!(policy["Type"], "AWS::IAM::ManagedPolicy");
    let statements = policy["Properties"]["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap();
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(actions(&statements[0]), ["lambda:InvokeFunction"]);
    assert_eq!(
        statements[0]["Resource"],
        json!({"Fn::GetAtt": ["DoorFunction", "Arn"]})
    );
    assert!(statements[0]["Condition"].is_null());
    assert_eq!(
        t["Outputs"]["DoorInvokePolicyArn"]["Value"],
        json!({"Ref": "DoorInvokePolicy"})
    );
    // Nothing else in the stack lets anyone invoke the door; the schedules invoke Function.
    let door_arn_uses = t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| {
            r.to_string()
                .contains(r#"{"Fn::GetAtt":["DoorFunction","Arn"]}"#)
        })
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>();
    assert_eq!(door_arn_uses, ["DoorInvokePolicy"]);
    for (name, r) in t["Resources"].as_object().unwrap() {
        assert!(
            !(r["Type"] == "AWS::Lambda::Permission" && r.to_string().contains("DoorFunction")),
            "{name} lets a service invoke the door"
        );
        assert!(
            !(r["Type"] == "AWS::Lambda::EventInvokeConfig"
                && r.to_string().contains("DoorFunction")),
            "{name}: the door is called synchronously only"
        );
    }
    // The same settings as the scheduled function, and SHOP_DOOR.
    let vars = |name: &str| {
        resource(&t, name)["Properties"]["Environment"]["Variables"]
            .as_object()
            .unwrap()
            .clone()
    };
    let mut door = vars("DoorFunction");
    assert_eq!(door.remove("SHOP_DOOR"), Some(json!("1")));
    assert_eq!(door, vars("Function"));
    let function = &resource(&t, "Function")["Properties"];
    let door = &resource(&t, "DoorFunction")["Properties"];
    for same in [
        "Role",
        "CodeUri",
        "Runtime",
        "Architectures",
        "VpcConfig",
        "LoggingConfig",
    ] {
        assert_eq!(door[same], function[same], "{same}");
    }
    assert_eq!(
        unreserver::action::DOOR_ACTIONS,
        ["release", "revive"],
        "the door's actions"
    );
    // The door's alarm: failed and throttled calls over calls, never a single LockBusy.
    let alarm = &resource(&t, "DoorErrorRateAlarm")["Properties"];
    let metrics = alarm["Metrics"].as_array().unwrap();
    let mut watched = Vec::new();
    for m in metrics {
        if let Some(stat) = m.get("MetricStat") {
            assert_eq!(stat["Metric"]["Namespace"], "AWS/Lambda");
            assert_eq!(
                stat["Metric"]["Dimensions"],
                json!([{"Name": "FunctionName", "Value": {"Ref": "DoorFunction"}}])
            );
            assert_eq!(stat["Period"], 300);
            assert_eq!(stat["Stat"], "Sum");
            watched.push(stat["Metric"]["MetricName"].as_str().unwrap());
        }
    }
    watched.sort_unstable();
    assert_eq!(watched, ["Errors", "Invocations", "Throttles"]);
    let expression = metrics.iter().find(|m| m["ReturnData"] == true).unwrap()["Expression"]
        .as_str()
        .unwrap();
    assert!(
        expression.contains("100 * (FILL(errors, 0) + FILL(throttles, 0))"),
        "{expression}"
    );
    assert!(expression.contains(">= 10"), "{expression}");
    assert_eq!(alarm["Threshold"], json!({"Ref": "DoorErrorRatePercent"}));
    assert_eq!(alarm["DatapointsToAlarm"], 2);
    // The scheduled function's own errors alarm watches the scheduled function alone.
    assert_eq!(
        resource(&t, "LambdaErrorsAlarm")["Properties"]["Dimensions"],
        json!([{"Name": "FunctionName", "Value": {"Ref": "Function"}}])
    );
}

/// The log group outlives the stack, except after a first create that rolled back (a kept
/// group would make the next create fail on its name).
#[test]
fn the_log_group_is_kept_except_after_a_failed_first_create() {
    let t = generated();
    let group = resource(&t, "LogGroup");
    assert_eq!(group["DeletionPolicy"], "RetainExceptOnCreate");
    assert_eq!(group["UpdateReplacePolicy"], "Retain");
    assert_eq!(
        resource(&t, "FailedRunsQueue")["Properties"]["MessageRetentionPeriod"],
        1_209_600
    );
}

/// The delay alarms' thresholds follow the mode unless given: follow mode releases within
/// seconds, so a regression to a minute alarms there, where interval mode's 900 s never would.
#[test]
fn the_delay_alarms_have_thresholds_per_mode() {
    let t = generated();
    for (alarm, parameter, key) in [
        (
            "ReleaseDelayP95Alarm",
            "ReleaseDelayAlarmSeconds",
            "ReleaseDelaySeconds",
        ),
        (
            "OldestDueAgeAlarm",
            "OldestDueAgeAlarmSeconds",
            "OldestDueAgeSeconds",
        ),
        (
            "OldestDeferredAgeAlarm",
            "OldestDueAgeAlarmSeconds",
            "OldestDueAgeSeconds",
        ),
    ] {
        let condition = format!("Has{}Threshold", parameter.trim_end_matches("AlarmSeconds"));
        assert_eq!(
            resource(&t, alarm)["Properties"]["Threshold"],
            json!({"Fn::If": [condition, {"Ref": parameter},
                {"Fn::FindInMap": ["AlarmThresholds", {"Ref": "ReleaseMode"}, key]}]}),
            "{alarm}"
        );
        assert_eq!(t["Parameters"][parameter]["Default"], "", "{parameter}");
        let thresholds = &t["Mappings"]["AlarmThresholds"];
        let (interval, follow) = (
            thresholds["interval"][key].as_i64().unwrap(),
            thresholds["follow"][key].as_i64().unwrap(),
        );
        assert_eq!(interval, 900, "{key}");
        assert!((60..=300).contains(&follow), "{key}: {follow}");
    }
    assert_eq!(
        t["Mappings"]["AlarmThresholds"]["follow"]["ReleaseDelaySeconds"],
        60
    );
    let pattern = t["Parameters"]["ReleaseDelayAlarmSeconds"]["AllowedPattern"]
        .as_str()
        .unwrap();
    for ok in ["", "60", "900", "999999"] {
        assert!(full_match(pattern, ok), "{ok:?}");
    }
    for bad in ["59", "0", "1e3", "-60", "1000000"] {
        assert!(!full_match(pattern, bad), "{bad:?}");
    }
}

/// The nightly purge is off by default; when on, it is a function of its own whose role reads
/// only its own secret (the purge's database role), never the release's, and the release
/// function's role never reads the purge's secret; its schedule sends a purge payload.
#[test]
fn the_nightly_purge_is_off_by_default_and_runs_with_its_own_function_and_secret() {
    let t = generated();
    assert_eq!(t["Parameters"]["NightlyPurge"]["Default"], "off");
    for name in [
        "PurgeFunction",
        "PurgeFunctionRole",
        "PurgeSchedulerRole",
        "PurgeSchedule",
        "PurgeLogGroup",
    ] {
        assert_eq!(resource(&t, name)["Condition"], "HasNightlyPurge", "{name}");
    }
    let vars = &resource(&t, "PurgeFunction")["Properties"]["Environment"]["Variables"];
    assert_eq!(vars["DB_SECRET_ID"], json!({"Ref": "PurgeDbSecretArn"}));
    let secrets = |role: &str| -> Vec<Value> {
        statements(resource(&t, role))
            .into_iter()
            .filter(|s| actions(s) == ["secretsmanager:GetSecretValue"])
            .map(|s| s["Resource"].clone())
            .collect()
    };
    assert_eq!(
        secrets("PurgeFunctionRole")[0],
        json!({"Fn::Sub": "${PurgeDbSecretArn}"})
    );
    assert!(!secrets("PurgeFunctionRole")
        .iter()
        .any(|r| r.to_string().contains("\"DbSecretArn")));
    assert!(!secrets("FunctionRole")
        .iter()
        .any(|r| r.to_string().contains("PurgeDbSecretArn")));
    let input = &resource(&t, "PurgeSchedule")["Properties"]["Target"]["Input"]["Fn::Sub"];
    for apply in [true, false] {
        let text = input[0]
            .as_str()
            .unwrap()
            .replace("${PurgeOlderThanDays}", "60")
            .replace("${Apply}", &apply.to_string());
        match unreserver::parse_payload(&serde_json::from_str(&text).unwrap()).unwrap() {
            unreserver::Request::Purge(p) => {
                assert_eq!((p.apply, p.orders, p.older_than_days), (apply, true, 60));
            }
            other => panic!("{other:?}"),
        }
    }
}
