# The tools of the tests of running off AWS: Debian's Prometheus, scraping a follower's
# --listen port every second, and Pushgateway (tests/it/prometheus.rs); promtool and amtool
# (alerts.rs); kubernetes-validate (deploy.rs). Source this file after pg.sh and tools.sh (its
# need_debian_pkg); each function exports the variables the tests read, or says why it cannot.

# alert_tools: promtool (Debian's prometheus) and amtool (prometheus-alertmanager), for
# tests/it/alerts.rs; prometheus-alertmanager itself, which tests/it/alertmanager.rs starts
# beside its own Prometheus and Pushgateway (prometheus_start and pushgateway_start install them).
alert_tools() {
  need_debian_pkg promtool prometheus ||
    echo "== Debian's prometheus cannot be installed here: promtool's tests are skipped" >&2
  need_debian_pkg amtool prometheus-alertmanager ||
    echo "== Debian's prometheus-alertmanager cannot be installed here: amtool's check is skipped" >&2
  need_debian_pkg prometheus-alertmanager prometheus-alertmanager ||
    echo "== Debian's prometheus-alertmanager cannot be installed here: the alert path's test is skipped" >&2
}

# deploy_tools: kubernetes-validate (PyPI: the Kubernetes API schemas ship in the package) for
# tests/it/deploy.rs; systemd-analyze comes with Debian's systemd.
deploy_tools() {
  command -v kubernetes-validate >/dev/null && return 0
  python3 -m pip install -q kubernetes-validate >&2 ||
    echo "== kubernetes-validate cannot be installed here: the manifests' schema test is skipped" >&2
  hash -r
}

# prometheus_start: Prometheus scraping 127.0.0.1:$UNRESERVER_TEST_FOLLOWER_PORT (job
# unreserver, every second); exports UNRESERVER_TEST_PROMETHEUS_URL and the follower's port.
prometheus_start() {
  if ! need_debian_pkg prometheus prometheus; then
    echo "== Debian's prometheus cannot be installed here: the Prometheus scrape test is skipped" >&2
    return 0
  fi
  local dir="$PG_DIR/prometheus" port
  mkdir -p "$dir"
  UNRESERVER_TEST_FOLLOWER_PORT=$(pg_free_port)
  port=$(pg_free_port)
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: unreserver
    static_configs:
      - targets: ["127.0.0.1:$UNRESERVER_TEST_FOLLOWER_PORT"]
YAML
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 &
  pids+=($!)
  wait_for_port "$port" "prometheus" "$dir/prometheus.log"
  export UNRESERVER_TEST_FOLLOWER_PORT
  export UNRESERVER_TEST_PROMETHEUS_URL="http://127.0.0.1:$port"
}

# pushgateway_start: Debian's Pushgateway; exports UNRESERVER_TEST_PUSHGATEWAY_URL.
pushgateway_start() {
  if ! need_debian_pkg prometheus-pushgateway prometheus-pushgateway; then
    echo "== Debian's prometheus-pushgateway cannot be installed here: the push test is skipped" >&2
    return 0
  fi
  local port log="$PG_DIR/pushgateway.log"
  port=$(pg_free_port)
  # Its own persistence file: Debian's build keeps the groups of an earlier run otherwise.
  prometheus-pushgateway --web.listen-address="127.0.0.1:$port" \
    --persistence.file="$PG_DIR/pushgateway.data" >"$log" 2>&1 &
  pids+=($!)
  wait_for_port "$port" "prometheus-pushgateway" "$log"
  export UNRESERVER_TEST_PUSHGATEWAY_URL="http://127.0.0.1:$port"
}
