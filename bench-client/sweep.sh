#!/usr/bin/env bash
# Pingpong sweep over pairs x window against the gateway, NATS and (when this
# bench-client has `pingpong --mqtt`) Mosquitto, then `bench-client plot`.
#
# This script starts and stops no server. Before running it:
#   - the gateway runs pinned alone to CPU 0 and listens on $GATEWAY_TCP:
#       taskset -c 0 target/release/gateway --shards 1 &
#   - nats-server and mosquitto, when they are measured, also run pinned to
#     CPU 0 (`taskset -apc 0 "$(pidof nats-server)"`), and preferably only
#     the server under test is busy during its runs;
#   - the client runs on CPU 1 (bench-client's default `--cpu 1`;
#     CLIENT_CPU below).
# A target that is not listening makes its runs fail; each failure is
# reported, the sweep goes on, and the script exits non-zero at the end.
#
# Every run's last stdout line (one JSON object starting with {"scenario":)
# is appended to $RESULTS; the charts go to $PLOT_DIR. Run from anywhere:
#   bench-client/sweep.sh
#   DURATION_S=10 WARMUP_S=2 PAIRS="10 100 1000 5000" TARGETS="gateway nats" bench-client/sweep.sh
#
# Settings (environment variables, defaults in brackets):
#   PAIRS ["10 100 1000"], WINDOWS ["1 8 32"]  the sweep
#   PAYLOAD [64]                                DATA payload bytes
#   DURATION_S [3], WARMUP_S [1], DRAIN_S [1]   per run, in seconds
#   TARGETS ["gateway nats mqtt"]               which servers to measure
#   GATEWAY_TCP [127.0.0.1:7000], NATS [127.0.0.1:4222], MQTT [127.0.0.1:1883]
#   CLIENT_CPU [1]                              the client's CPU
#   RESULTS [bench-results/sweep.jsonl]        appended to, never truncated
#   PLOT_DIR [bench-results/plots]             where the SVGs go
#   BENCH_CLIENT [target/release/bench-client] built first unless SKIP_BUILD=1
# Relative paths are taken from the workspace root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

PAIRS=${PAIRS:-"10 100 1000"}
WINDOWS=${WINDOWS:-"1 8 32"}
PAYLOAD=${PAYLOAD:-64}
DURATION_S=${DURATION_S:-3}
WARMUP_S=${WARMUP_S:-1}
DRAIN_S=${DRAIN_S:-1}
TARGETS=${TARGETS:-"gateway nats mqtt"}
GATEWAY_TCP=${GATEWAY_TCP:-127.0.0.1:7000}
NATS=${NATS:-127.0.0.1:4222}
MQTT=${MQTT:-127.0.0.1:1883}
CLIENT_CPU=${CLIENT_CPU:-1}
RESULTS=${RESULTS:-bench-results/sweep.jsonl}
PLOT_DIR=${PLOT_DIR:-bench-results/plots}
BENCH_CLIENT=${BENCH_CLIENT:-target/release/bench-client}
SKIP_BUILD=${SKIP_BUILD:-0}

if [[ "$SKIP_BUILD" != 1 ]]; then
    cargo build --release -p bench-client
fi
if [[ ! -x "$BENCH_CLIENT" ]]; then
    echo "sweep: $BENCH_CLIENT not found or not executable" >&2
    exit 2
fi

# Mosquitto only when this build knows --mqtt. (The help text is captured
# first: `grep -q` in a pipeline would trip pipefail with SIGPIPE.)
pingpong_help=$("$BENCH_CLIENT" pingpong --help)
has_mqtt=0
if grep -q -- '--mqtt' <<<"$pingpong_help"; then
    has_mqtt=1
fi

# target name -> bench-client flags
declare -a targets=()
for t in $TARGETS; do
    case "$t" in
        gateway) targets+=("gateway") ;;
        nats) targets+=("nats") ;;
        mqtt | mosquitto)
            if [[ "$has_mqtt" == 1 ]]; then
                targets+=("mqtt")
            else
                echo "sweep: this bench-client has no 'pingpong --mqtt'; Mosquitto skipped" >&2
            fi
            ;;
        *)
            echo "sweep: unknown target '$t' (gateway, nats, mqtt)" >&2
            exit 2
            ;;
    esac
done

if ((${#targets[@]} == 0)); then
    echo "sweep: no target to measure (TARGETS='$TARGETS')" >&2
    exit 2
fi

target_flags() {
    case "$1" in
        gateway) echo "--tcp $GATEWAY_TCP" ;;
        nats) echo "--nats $NATS" ;;
        mqtt) echo "--mqtt $MQTT" ;;
    esac
}

mkdir -p "$(dirname "$RESULTS")" "$PLOT_DIR"
touch "$RESULTS"
runs=0
failed=0
for p in $PAIRS; do
    for w in $WINDOWS; do
        # Targets alternate inside each (pairs, window) step, so a slow drift
        # of the machine does not land on one target only.
        for t in "${targets[@]}"; do
            runs=$((runs + 1))
            read -r -a flags <<<"$(target_flags "$t")"
            echo "sweep: $t pairs=$p window=$w (${DURATION_S}s + ${WARMUP_S}s warmup)" >&2
            if ! out=$("$BENCH_CLIENT" pingpong "${flags[@]}" \
                --pairs "$p" --window "$w" --payload "$PAYLOAD" \
                --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --drain-s "$DRAIN_S" \
                --cpu "$CLIENT_CPU"); then
                echo "sweep: $t pairs=$p window=$w failed" >&2
                failed=$((failed + 1))
                continue
            fi
            last=$(tail -n1 <<<"$out")
            if [[ "$last" != '{"scenario":'* ]]; then
                echo "sweep: $t pairs=$p window=$w printed no JSON line" >&2
                failed=$((failed + 1))
                continue
            fi
            printf '%s\n' "$last" >>"$RESULTS"
        done
    done
done

echo "sweep: $((runs - failed)) of $runs runs appended to $RESULTS" >&2
"$BENCH_CLIENT" plot --input "$RESULTS" --out-dir "$PLOT_DIR"
if ((failed > 0)); then
    exit 1
fi
