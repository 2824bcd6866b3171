#!/usr/bin/env bash
# StatsD -> Graphite on this machine, without Docker: Debian's graphite-carbon (carbon-cache)
# and graphite-web, fed by the reference StatsD daemon (the npm package `statsd`, run by this
# machine's node), with the same legacy namespace examples/grafana/cost-middleware.json reads.
#
#   examples/graphite/run-stack.sh [--requests N] [--png FILE] [--exit]
#       start all three in a temporary folder, run `cost-middleware demo` into them, print the
#       graphite-web address and serve until Ctrl-C (--exit: stop after the demo), then stop
#       everything and remove the folder. --png renders cost by model over the run.
#   examples/graphite/run-stack.sh up DIR
#       start them with every file in DIR (an empty folder you own); prints KEY=VALUE lines:
#       STATSD_PORT, GRAPHITE_URL, CARBON_PORT
#   examples/graphite/run-stack.sh down DIR
#       stop what `up DIR` started
#   examples/graphite/run-stack.sh install | check
#       only install what is missing | exit 1 (naming it) when something is missing
#
# Missing pieces are installed first: the two Debian packages with apt-get (as root, or
# through sudo), and statsd from the npm registry into STATSD_NODE_HOME (default
# ~/.cache/cost-middleware/statsd-<version>), reused by later runs. Nothing else outside DIR
# is written; the daemons listen on free loopback ports only.
set -euo pipefail

STATSD_VERSION=0.9.0
STATSD_NODE_HOME=${STATSD_NODE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/cost-middleware/statsd-$STATSD_VERSION}
# Debian's graphite-web lives in the system Python's dist-packages, not in a virtualenv or pyenv.
SYSTEM_PYTHON=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "run-stack.sh: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

have_graphite() {
  command -v carbon-cache >/dev/null && "$SYSTEM_PYTHON" -c 'import graphite.render, django' 2>/dev/null
}
have_statsd() { [ -f "$STATSD_NODE_HOME/node_modules/statsd/stats.js" ]; }

check() {
  local missing=()
  have_graphite || missing+=("graphite-carbon/graphite-web (Debian packages)")
  command -v node >/dev/null || missing+=("node")
  have_statsd || missing+=("statsd@$STATSD_VERSION in $STATSD_NODE_HOME")
  [ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (run: $0 install)"
}

install_missing() {
  if ! have_graphite; then
    echo "installing graphite-carbon and graphite-web (apt-get)" >&2
    # The packages' own services are never started: policy or not, this script runs its own.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        graphite-carbon graphite-web >&2 \
      || { as_root apt-get update -q >&2 && as_root env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends graphite-carbon graphite-web >&2; }
  fi
  command -v node >/dev/null || die "node is not installed (Debian: apt-get install nodejs npm)"
  if ! have_statsd; then
    command -v npm >/dev/null || die "npm is not installed (Debian: apt-get install npm)"
    echo "installing statsd@$STATSD_VERSION from the npm registry into $STATSD_NODE_HOME" >&2
    mkdir -p "$STATSD_NODE_HOME"
    npm install --prefix "$STATSD_NODE_HOME" --no-audit --no-fund --loglevel=error \
        "statsd@$STATSD_VERSION" >&2
  fi
}

# N distinct free loopback TCP ports (all bound at once, so no two are the same).
free_ports() {
  "$SYSTEM_PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not start; see its log under $DIR/log"
    sleep 0.2
  done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {  # start NAME COMMAND...: in its own session (no terminal signal reaches it),
  # logging to log/NAME.log, its pid in run/NAME.pid
  local name=$1; shift
  setsid "$@" >"$DIR/log/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/$name.pid"
}

write_configs() {
  local carbon_port=$1 pickle_port=$2 query_port=$3 web_port=$4 statsd_port=$5 mgmt_port=$6
  mkdir -p "$DIR/conf" "$DIR/storage/whisper" "$DIR/storage/lists" "$DIR/log/webapp" \
    "$DIR/run" "$DIR/webapp"
  cat >"$DIR/conf/carbon.conf" <<EOF
[cache]
STORAGE_DIR = $DIR/storage/
LOCAL_DATA_DIR = $DIR/storage/whisper/
WHITELISTS_DIR = $DIR/storage/lists/
CONF_DIR = $DIR/conf/
LOG_DIR = $DIR/log/
PID_DIR = $DIR/run/
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = $carbon_port
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = $pickle_port
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = $query_port
LOG_LISTENER_CONN_SUCCESS = False
LOG_UPDATES = False
LOG_CREATES = False
EOF
  # StatsD flushes every second, so the finest archive holds one point per second (30 min),
  # then 10 s points for a day.
  cat >"$DIR/conf/storage-schemas.conf" <<'EOF'
[carbon]
pattern = ^carbon\.
retentions = 10s:1d

[default]
pattern = .*
retentions = 1s:30m,10s:1d
EOF
  # How 1 s points fold into 10 s ones: counts add up, extremes stay extremes, gauges keep
  # their last value, rates and means average.
  cat >"$DIR/conf/storage-aggregation.conf" <<'EOF'
[counts]
pattern = ^stats_counts\.
xFilesFactor = 0
aggregationMethod = sum

[timer_counts]
pattern = ^stats\.timers\..*\.(count|sum|sum_[0-9]+)$
xFilesFactor = 0
aggregationMethod = sum

[timer_lower]
pattern = ^stats\.timers\..*\.lower(_[0-9]+)?$
xFilesFactor = 0
aggregationMethod = min

[timer_upper]
pattern = ^stats\.timers\..*\.upper(_[0-9]+)?$
xFilesFactor = 0
aggregationMethod = max

[gauges]
pattern = ^stats\.gauges\.
xFilesFactor = 0
aggregationMethod = last

[default]
pattern = .*
xFilesFactor = 0
aggregationMethod = average
EOF
  local secret
  secret=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  cat >"$DIR/webapp/stack_local_settings.py" <<EOF
# graphite-web settings for this stack only (GRAPHITE_SETTINGS_MODULE points here).
SECRET_KEY = "$secret"
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
GRAPHITE_ROOT = "/usr/share/graphite-web"
STATIC_ROOT = "/usr/share/graphite-web/static"
CONF_DIR = "$DIR/conf"
STORAGE_DIR = "$DIR/storage"
WHISPER_DIR = "$DIR/storage/whisper/"
INDEX_FILE = "$DIR/storage/index"
LOG_DIR = "$DIR/log/webapp"
LOG_ROTATION = False
DEFAULT_XFILES_FACTOR = 0
# Points carbon holds in memory and has not written yet are read from it directly.
CARBONLINK_HOSTS = ["127.0.0.1:$query_port"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": "$DIR/storage/graphite.db"}}
EOF
  cat >"$DIR/statsd.js" <<EOF
{
  graphiteHost: "127.0.0.1",
  graphitePort: $carbon_port,
  flushInterval: 1000,
  percentThreshold: [50, 90, 99],
  graphite: { legacyNamespace: true },
  servers: [{ server: "./servers/udp", address: "127.0.0.1", port: $statsd_port }],
  mgmt_address: "127.0.0.1",
  mgmt_port: $mgmt_port
}
EOF
  cat >"$DIR/stack.env" <<EOF
STATSD_PORT=$statsd_port
GRAPHITE_URL=http://127.0.0.1:$web_port
CARBON_PORT=$carbon_port
QUERY_PORT=$query_port
MGMT_PORT=$mgmt_port
EOF
}

web() {  # web ARGS...: the command line running ARGS in graphite-web's Django, this stack's settings
  WEB=(env PYTHONPATH="$DIR/webapp" DJANGO_SETTINGS_MODULE=graphite.settings
       GRAPHITE_SETTINGS_MODULE=stack_local_settings "$SYSTEM_PYTHON" -m django "$@")
}

up() {
  [ -d "$DIR" ] || die "$DIR is not a folder"
  [ ! -e "$DIR/run" ] || die "$DIR already holds a stack (run: $0 down $DIR)"
  install_missing
  local ports
  read -r -a ports <<<"$(free_ports 6)"
  write_configs "${ports[@]}"
  # shellcheck source=/dev/null
  . "$DIR/stack.env"
  start carbon-cache carbon-cache --config="$DIR/conf/carbon.conf" \
    --pidfile="$DIR/run/carbon-cache.twistd.pid" --logdir="$DIR/log" --nodaemon start
  web migrate --noinput -v 0
  "${WEB[@]}" >"$DIR/log/migrate.log" 2>&1 \
    || die "graphite-web's database setup failed; see $DIR/log/migrate.log"
  web runserver --noreload --nothreading "127.0.0.1:${GRAPHITE_URL##*:}"
  start graphite-web "${WEB[@]}"
  start statsd node "$STATSD_NODE_HOME/node_modules/statsd/stats.js" "$DIR/statsd.js"
  wait_for carbon-cache 30 tcp_open "$CARBON_PORT"
  wait_for carbon-cache 30 tcp_open "$QUERY_PORT"
  wait_for statsd 30 tcp_open "$MGMT_PORT"
  wait_for graphite-web 60 curl -fsS "$GRAPHITE_URL/metrics/find?query=*"
  grep -E '^(STATSD_PORT|GRAPHITE_URL|CARBON_PORT)=' "$DIR/stack.env"
}

down() {
  [ -d "$DIR/run" ] || return 0
  local pidfile pid
  for pidfile in "$DIR/run/statsd.pid" "$DIR/run/graphite-web.pid" "$DIR/run/carbon-cache.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  rm -rf "$DIR/run"
}

cost_middleware_cmd() {
  if command -v cost-middleware >/dev/null; then echo cost-middleware
  elif [ -x "$HERE/../../.venv/bin/cost-middleware" ]; then echo "$HERE/../../.venv/bin/cost-middleware"
  else die "cost-middleware is not installed (pip install -e . in the repository)"
  fi
}

demo() {
  local requests=3000 png="" stay=1
  while [ $# -gt 0 ]; do
    case $1 in
      --requests) requests=$2; shift 2 ;;
      --png) png=$2; shift 2 ;;
      --exit) stay=0; shift ;;
      *) die "unknown option $1 (see the top of $0)" ;;
    esac
  done
  local cli
  cli=$(cost_middleware_cmd)
  DIR=$(mktemp -d)
  trap 'down; rm -rf "$DIR"' EXIT
  trap 'exit 130' INT TERM
  up >/dev/null
  # shellcheck source=/dev/null
  . "$DIR/stack.env"
  local from until
  from=$(date +%s)
  COST_MIDDLEWARE_STATSD_HOST=127.0.0.1 COST_MIDDLEWARE_STATSD_PORT=$STATSD_PORT \
    COST_MIDDLEWARE_DATABASE_URL="sqlite:///$DIR/ledger.db" \
    COST_MIDDLEWARE_SPOOL_DIR="$DIR/spool" "$cli" demo --requests "$requests"
  sleep 3  # the demo's last metrics: StatsD flushes each second, carbon right after
  until=$(date +%s)
  if [ -n "$png" ]; then
    # Each model's spend added up over the run, stacked: the top line is the demo's total.
    curl -fsS -o "$png" -G "$GRAPHITE_URL/render" --data-urlencode format=png \
      --data-urlencode "from=$from" --data-urlencode "until=$until" \
      --data-urlencode width=900 --data-urlencode height=400 \
      --data-urlencode "title=Cost by model over the run (USD, cumulative)" \
      --data-urlencode "target=aliasByNode(integral(scale(stats_counts.cost_middleware.cost.*.*,0.000001)),-2,-1)" \
      --data-urlencode areaMode=stacked --data-urlencode lineWidth=1
    echo "rendered $png" >&2
  fi
  echo "graphite-web: $GRAPHITE_URL  (e.g. $GRAPHITE_URL/render?target=stats_counts.cost_middleware.cost.*.*&from=-10min&format=json)"
  echo "StatsD: 127.0.0.1:$STATSD_PORT (udp)"
  if [ $stay = 1 ]; then
    echo "serving until Ctrl-C"
    while :; do sleep 3600; done
  fi
}

case ${1:-} in
  up) [ $# = 2 ] || die "usage: $0 up DIR"; DIR=$(cd "$2" && pwd); up ;;
  down) [ $# = 2 ] || die "usage: $0 down DIR"; DIR=$(cd "$2" && pwd); down ;;
  install) install_missing ;;
  check) check ;;
  *) demo "$@" ;;
esac
