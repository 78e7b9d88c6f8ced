//! The tenant fan-out (`TenantFanOut`, docs/tenants.md "On AWS: fan-out") in what the SAM
//! translator generates: EventBridge Scheduler starts an Express workflow that lists the
//! tenants on the release function and runs each on a worker of its own from an inline Map
//! state, `TenantConcurrency` at once; against what AWS's own CDK writes for the same wiring
//! (`tests/fixtures/cdk-oracle.json`, `scripts/cdk-oracle.py`).

use serde_json::{json, Value};

use unreserver::action::tenancy::{TenantChoice, TENANT_FIELD};

use crate::sam::{actions, generated, resource, statements};

/// Stands for `${TenantConcurrency}` in the definition, to see where the parameter lands.
const CONCURRENCY: i64 = 424_242;

/// The state machine's definition, parsed, its `!Sub` variables replaced by their names (or,
/// for the parameter, by [`CONCURRENCY`]); and those variables.
fn definition(t: &Value) -> (Value, Value) {
    let sub = &resource(t, "TenantFanOutStateMachine")["Properties"]["DefinitionString"]["Fn::Sub"];
    let (text, vars) = (sub[0].as_str().unwrap(), &sub[1]);
    let text = text
        .replace("${AWS::Partition}", "aws")
        .replace("${ListerArn}", "ListerArn")
        .replace("${WorkerArn}", "WorkerArn")
        .replace("${LambdaRetry}", vars["LambdaRetry"].as_str().unwrap())
        .replace("${TenantConcurrency}", &CONCURRENCY.to_string());
    assert!(!text.contains("${"), "an unknown variable in {text}");
    let parsed = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (parsed, vars.clone())
}

/// A payload as the function reads it: its `tenant` field apart, then the action's own
/// fields (the handler's `parse_scoped`, through the library's public parts).
fn scoped(payload: &Value) -> (unreserver::Request, TenantChoice) {
    let mut payload = payload.clone();
    let choice = match payload.as_object_mut().unwrap().remove(TENANT_FIELD) {
        Some(value) => TenantChoice::from_payload(&value).unwrap(),
        None => TenantChoice::Unnamed,
    };
    (unreserver::parse_payload(&payload).unwrap(), choice)
}

fn oracle() -> Value {
    serde_json::from_str(include_str!("../fixtures/cdk-oracle.json")).unwrap()
}

/// CDK's `ARN:*` (an `Fn::Join`) in the template's spelling (an `Fn::Sub`).
fn as_sub(resource: &Value) -> Value {
    match resource.get("Fn::Join") {
        Some(join) => {
            let id = join[1][0]["Fn::GetAtt"][0].as_str().unwrap();
            json!({"Fn::Sub": format!("${{{id}.Arn}}{}", join[1][1].as_str().unwrap())})
        }
        None => resource.clone(),
    }
}

#[test]
fn the_fan_out_is_off_by_default_and_one_engine_schedules_the_runs() {
    let t = generated();
    assert_eq!(t["Parameters"]["TenantFanOut"]["Default"], "false");
    assert_eq!(
        t["Conditions"]["FansOut"],
        json!({"Fn::Equals": [{"Ref": "TenantFanOut"}, "true"]})
    );
    // Everything the fan-out adds exists only with it.
    for name in [
        "TenantWorkerFunction",
        "TenantFanOutStateMachine",
        "TenantFanOutRole",
        "FanOutLogGroup",
        "TenantFanOutSchedule",
        "FanOutSchedulerRole",
        "FanOutFailedAlarm",
    ] {
        assert_eq!(resource(&t, name)["Condition"], "FansOut", "{name}");
    }
    // With it, the release function's own run schedule is off: the fan-out's schedule starts
    // every run, through the state machine.
    assert_eq!(
        resource(&t, "FunctionSchedule")["Properties"]["State"],
        json!({"Fn::If": ["FansOut", "DISABLED", "ENABLED"]})
    );
    let fan_out = &resource(&t, "TenantFanOutSchedule")["Properties"];
    let direct = &resource(&t, "FunctionSchedule")["Properties"];
    assert!(fan_out["State"].is_null(), "enabled whenever it exists");
    assert_eq!(
        fan_out["Target"]["Arn"],
        json!({"Ref": "TenantFanOutStateMachine"})
    );
    assert_eq!(
        fan_out["Target"]["RoleArn"],
        json!({"Fn::GetAtt": ["FanOutSchedulerRole", "Arn"]})
    );
    for same in ["GroupName", "ScheduleExpression"] {
        assert_eq!(fan_out[same], direct[same], "{same}");
    }
    assert_eq!(
        fan_out["Target"]["DeadLetterConfig"],
        direct["Target"]["DeadLetterConfig"]
    );
    // Interval mode's retries (the fan-out requires it).
    let (ours, theirs) = (
        &fan_out["Target"]["RetryPolicy"],
        &direct["Target"]["RetryPolicy"],
    );
    assert_eq!(ours["MaximumRetryAttempts"], theirs["MaximumRetryAttempts"]);
    assert_eq!(
        ours["MaximumEventAgeInSeconds"],
        theirs["MaximumEventAgeInSeconds"]["Fn::If"][2]
    );
    // The fan-out runs a tenant per interval: ReleaseMode follow is refused with it.
    let rule = t["Rules"]["FanOutNeedsTenantsAndIntervals"].to_string();
    assert!(
        rule.contains(r#"{"Fn::Equals":[{"Ref":"ReleaseMode"},"interval"]}"#),
        "{rule}"
    );
    for tenants in ["Tenants", "TenantsQuery", "TenantSecretPrefix"] {
        assert!(
            rule.contains(&format!(r#"{{"Ref":"{tenants}"}}"#)),
            "{rule}"
        );
    }
}

/// The scheduler's role may start the fan-out's state machine (and write to the schedule's
/// dead-letter queue), nothing else, as CDK's `StepFunctionsStartExecution` target grants;
/// only the stack's schedule group may assume it.
#[test]
fn the_schedule_may_start_the_fan_out_and_nothing_else() {
    let t = generated();
    let role = resource(&t, "FanOutSchedulerRole");
    assert_eq!(
        role["Properties"]["AssumeRolePolicyDocument"],
        resource(&t, "SchedulerRole")["Properties"]["AssumeRolePolicyDocument"]
    );
    let granted = statements(role);
    assert_eq!(granted.len(), 2, "{granted:?}");
    let cdk = oracle()["fan_out_start_statements"].clone();
    let cdk = cdk.as_array().unwrap();
    assert_eq!(cdk.len(), 1);
    assert_eq!(cdk[0]["Resource"], json!({"Ref": "FanOut"}));
    for s in &granted {
        assert_eq!(s["Effect"], "Allow");
        assert!(s["Condition"].is_null());
        match actions(s)[..] {
            [ref a] if a == "states:StartExecution" => {
                assert_eq!(actions(&cdk[0]), ["states:StartExecution"]);
                assert_eq!(s["Resource"], json!({"Ref": "TenantFanOutStateMachine"}));
            }
            [ref a] if a == "sqs:SendMessage" => assert_eq!(
                s["Resource"],
                json!({"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]})
            ),
            ref other => panic!("unexpected permission {other:?}"),
        }
    }
}

/// An Express workflow lists the tenants on the release function, then an inline Map state
/// runs each on the worker, at most `TenantConcurrency` at once; the worker's reserved
/// concurrency is that same parameter (at least the Map's), its own, so the lister is never
/// throttled by its workers.
#[test]
fn the_fan_out_runs_each_tenant_on_a_worker_that_never_throttles_the_lister() {
    let t = generated();
    let machine = &resource(&t, "TenantFanOutStateMachine")["Properties"];
    assert_eq!(machine["StateMachineType"], "EXPRESS");
    assert_eq!(oracle()["fan_out_type"], machine["StateMachineType"]);
    let (d, vars) = definition(&t);
    assert_eq!(
        vars["ListerArn"],
        json!({"Fn::GetAtt": ["Function", "Arn"]})
    );
    assert_eq!(
        vars["WorkerArn"],
        json!({"Fn::GetAtt": ["TenantWorkerFunction", "Arn"]})
    );
    assert!(
        vars.get("TenantConcurrency").is_none(),
        "${{TenantConcurrency}} must be the parameter"
    );

    let list = &d["States"][d["StartAt"].as_str().unwrap()];
    assert_eq!(list["Resource"], "arn:aws:states:::lambda:invoke");
    assert_eq!(list["Parameters"]["FunctionName"], "ListerArn");
    assert_eq!(list["Parameters"]["Payload"], json!({"action": "tenants"}));
    assert!(matches!(
        scoped(&list["Parameters"]["Payload"]),
        (unreserver::Request::Tenants(_), TenantChoice::Unnamed)
    ));
    assert_eq!(
        list["ResultSelector"],
        json!({"tenants.$": "$.Payload.tenants"})
    );
    let map = &d["States"][list["Next"].as_str().unwrap()];
    assert_eq!(map["Type"], "Map");
    assert_eq!(map["ItemsPath"], "$.tenants");
    assert_eq!(map["ItemProcessor"]["ProcessorConfig"]["Mode"], "INLINE");
    assert_eq!(
        map["MaxConcurrency"], CONCURRENCY,
        "bound to TenantConcurrency"
    );
    let processor = &map["ItemProcessor"];
    let run = &processor["States"][processor["StartAt"].as_str().unwrap()];
    assert_eq!(run["Parameters"]["FunctionName"], "WorkerArn");
    assert_eq!(
        run["Parameters"]["Payload"],
        json!({"action": "run", "tenant.$": "$.tenant", "source": "fanout"})
    );
    assert_eq!(
        map["ItemSelector"],
        json!({"tenant.$": "$$.Map.Item.Value"})
    );
    // What the worker receives for the tenant "shop_a": a run of that tenant.
    let mut payload = run["Parameters"]["Payload"].clone();
    let fields = payload.as_object_mut().unwrap();
    assert_eq!(fields.remove("tenant.$"), Some(json!("$.tenant")));
    fields.insert("tenant".into(), json!("shop_a"));
    match scoped(&payload) {
        (unreserver::Request::Run(_), TenantChoice::Named(name)) => assert_eq!(name, "shop_a"),
        other => panic!("{other:?}"),
    }
    // CDK writes the same Map for the same task (its MaxConcurrency a literal 4).
    let cdk_map = &oracle()["fan_out_map"];
    for same in ["Type", "ItemsPath", "ItemSelector"] {
        assert_eq!(cdk_map[same], map[same], "{same}");
    }

    // The worker: reserved concurrency ≥ MaxConcurrency (the same parameter), as CDK writes
    // it on the function; the release function's own stays its own.
    let reserved =
        |name: &str| resource(&t, name)["Properties"]["ReservedConcurrentExecutions"].clone();
    assert_eq!(
        reserved("TenantWorkerFunction"),
        json!({"Fn::If": ["ReservesConcurrency", {"Ref": "TenantConcurrency"}, {"Ref": "AWS::NoValue"}]})
    );
    assert_eq!(
        reserved("Function"),
        json!({"Fn::If": ["ReservesConcurrency", {"Ref": "ScheduleConcurrency"}, {"Ref": "AWS::NoValue"}]})
    );
    assert_eq!(
        oracle()["worker_reserved_concurrency"],
        cdk_map["MaxConcurrency"]
    );
    let allowed: Vec<i64> = t["Parameters"]["TenantConcurrency"]["AllowedValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    // "In this mode, the Map state supports up to 40 concurrent iterations." (Step Functions
    // Developer Guide, "Using Map state in Inline mode".)
    assert!(allowed.iter().all(|n| (1..=40).contains(n)), "{allowed:?}");

    // The worker runs the release function's code with its settings, one tenant a call,
    // synchronously: no schedule, no asynchronous configuration of its own.
    let vars_of = |name: &str| resource(&t, name)["Properties"]["Environment"]["Variables"].clone();
    assert_eq!(vars_of("TenantWorkerFunction"), vars_of("Function"));
    for same in [
        "Role",
        "CodeUri",
        "Runtime",
        "Architectures",
        "VpcConfig",
        "LoggingConfig",
    ] {
        assert_eq!(
            resource(&t, "TenantWorkerFunction")["Properties"][same],
            resource(&t, "Function")["Properties"][same],
            "{same}"
        );
    }
    for (name, r) in t["Resources"].as_object().unwrap() {
        let text = r.to_string();
        if text.contains("TenantWorkerFunction") {
            assert!(
                r["Type"] != "AWS::Lambda::EventInvokeConfig"
                    && r["Type"] != "AWS::Scheduler::Schedule"
                    && r["Type"] != "AWS::Lambda::Permission",
                "{name}: the worker is called by the state machine only"
            );
        }
    }
}

/// One tenant's failure never fails the others: each iteration retries Lambda's throttling
/// and service errors with backoff (CDK's retry for a LambdaInvoke task, and the throttle),
/// and catches every other error into its own result; the execution then fails naming the
/// failed tenants, after all of them ran. The lister's failure fails the execution.
#[test]
fn one_tenants_failure_never_fails_the_others_and_the_workflow_names_it() {
    let t = generated();
    let (d, _) = definition(&t);
    let cdk_retry = &oracle()["fan_out_lambda_retry"][0];
    let list = &d["States"][d["StartAt"].as_str().unwrap()];
    let map = &d["States"][list["Next"].as_str().unwrap()];
    let processor = &map["ItemProcessor"];
    let run = &processor["States"][processor["StartAt"].as_str().unwrap()];
    for task in [list, run] {
        let retry = task["Retry"].as_array().unwrap();
        assert_eq!(retry.len(), 1, "{retry:?}");
        let errors: Vec<&str> = retry[0]["ErrorEquals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        // "When Lambda hits the maximum number of invocations, the error is
        // Lambda.TooManyRequestsException." (Step Functions Developer Guide, "Handle Lambda
        // service exceptions".)
        assert!(
            errors.contains(&"Lambda.TooManyRequestsException"),
            "{errors:?}"
        );
        for cdk in cdk_retry["ErrorEquals"].as_array().unwrap() {
            assert!(errors.contains(&cdk.as_str().unwrap()), "{cdk} not retried");
        }
        assert!(
            !errors.contains(&"States.ALL"),
            "a tenant's own failure is not retried"
        );
        assert!(retry[0]["BackoffRate"].as_f64().unwrap() > 1.0, "backoff");
        assert!(retry[0]["IntervalSeconds"].as_i64().unwrap() >= 1);
        // The retries fit well inside Express's five minutes.
        let (mut wait, mut interval) = (0.0, retry[0]["IntervalSeconds"].as_f64().unwrap());
        let cap = retry[0]["MaxDelaySeconds"].as_f64().unwrap_or(f64::MAX);
        for _ in 1..retry[0]["MaxAttempts"].as_i64().unwrap() {
            wait += interval.min(cap);
            interval *= retry[0]["BackoffRate"].as_f64().unwrap();
        }
        assert!(wait <= 120.0, "{wait} s of retries");
    }
    assert!(
        list["Catch"].is_null(),
        "no tenants listed is the execution's failure"
    );
    let catch = run["Catch"].as_array().unwrap();
    assert_eq!(catch.len(), 1);
    assert_eq!(catch[0]["ErrorEquals"], json!(["States.ALL"]));
    assert_eq!(catch[0]["ResultPath"], "$.error", "keeps the tenant's name");
    let failed = &processor["States"][catch[0]["Next"].as_str().unwrap()];
    assert_eq!(
        failed["End"], true,
        "the iteration ends with its own result"
    );
    assert_eq!(failed["Parameters"]["tenant.$"], "$.tenant");
    assert_eq!(failed["Parameters"]["failed"], true);
    assert_eq!(
        run["ResultPath"],
        Value::Null,
        "a report never fills the 256 KiB"
    );
    assert_eq!(run["End"], true);

    // After the Map: the failed tenants by name, and the execution fails on them.
    let summary = &d["States"][map["Next"].as_str().unwrap()];
    let output = summary["Output"].as_str().unwrap();
    assert!(
        output.contains("'failed': [$states.input[failed = true].tenant]"),
        "{output}"
    );
    let choice = &d["States"][summary["Next"].as_str().unwrap()];
    let fail = &d["States"][choice["Choices"][0]["Next"].as_str().unwrap()];
    assert_eq!(fail["Type"], "Fail");
    assert!(fail["Cause"]
        .as_str()
        .unwrap()
        .contains("$join($states.input.failed, ', ')"));
    assert_eq!(
        d["States"][choice["Default"].as_str().unwrap()]["Type"],
        "Succeed"
    );

    // Its executions are visible: Express keeps no history of its own, so it logs to a log
    // group of the stack's, as CDK's `logs` option writes it; an alarm on failed ones.
    let logging = &resource(&t, "TenantFanOutStateMachine")["Properties"]["LoggingConfiguration"];
    let cdk_logging = &oracle()["fan_out_logging"];
    assert_eq!(logging["Level"], cdk_logging["Level"]);
    assert_eq!(logging["IncludeExecutionData"], true);
    assert_eq!(
        logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"],
        json!({"Fn::GetAtt": ["FanOutLogGroup", "Arn"]})
    );
    let alarm = resource(&t, "FanOutFailedAlarm").to_string();
    for metric in ["ExecutionsFailed", "ExecutionsTimedOut"] {
        assert!(alarm.contains(metric), "{metric}");
    }
}

/// The workflow's role may invoke the lister and the worker (their ARNs and `ARN:*`, exactly
/// what CDK grants a LambdaInvoke task) and deliver its logs (CDK's actions on `*`), nothing
/// else.
#[test]
fn the_workflow_may_invoke_its_two_functions_and_nothing_else() {
    let t = generated();
    let role = resource(&t, "TenantFanOutRole");
    let trust = &role["Properties"]["AssumeRolePolicyDocument"]["Statement"];
    assert_eq!(trust.as_array().unwrap().len(), 1);
    assert_eq!(trust[0]["Principal"]["Service"], "states.amazonaws.com");
    let oracle = oracle();
    let cdk_invoke: Vec<Value> = oracle["fan_out_invoke_statements"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Resource"].as_array().unwrap().clone())
        .map(|r| as_sub(&r))
        .collect();
    let cdk_logs = &oracle["fan_out_log_statements"];
    let granted = statements(role);
    assert_eq!(granted.len(), 2, "{granted:?}");
    for s in &granted {
        assert_eq!(s["Effect"], "Allow");
        assert!(s["Condition"].is_null());
        if actions(s) == ["lambda:InvokeFunction"] {
            // CDK's, with its ids for ours: Lister the release function, Worker the worker.
            let ours: Vec<Value> = s["Resource"].as_array().unwrap().clone();
            let expected: Vec<Value> = cdk_invoke
                .iter()
                .map(|r| {
                    let text = r
                        .to_string()
                        .replace("Lister", "Function")
                        .replace("Worker", "TenantWorkerFunction");
                    serde_json::from_str(&text).unwrap()
                })
                .collect();
            assert_eq!(ours, expected);
        } else {
            assert_eq!(s["Resource"], "*");
            assert_eq!(actions(s), actions(&cdk_logs[0]));
            assert!(actions(s).iter().all(|a| a.starts_with("logs:")));
        }
    }
}
