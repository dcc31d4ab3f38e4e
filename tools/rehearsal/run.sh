#!/usr/bin/env bash
# Full-size rehearsal of the real-model path on the CPU: `generate` for 2 steps through the
# real loaders at the real resolutions, on the random full-size weights that
# tools/rehearsal/make_random_weights.py writes (see tools/rehearsal/README.md).
#
#   /tmp/ref/bin/python tools/rehearsal/make_random_weights.py --out /tmp/rehearsal
#   tools/rehearsal/run.sh            # setups a c b d e, in that order
#   tools/rehearsal/run.sh a c        # only these
#
# Setups:
#   a  SD 2.1-base, plain SDS          (--preset sd21-sds, else quality-sds; prior sd21-base/)
#   b  SD 2.1-base, RewardSDS          (--preset sd21, else quality; reward image-reward/)
#   c  MVDream diffusers-style, RewardSDS with ImageReward (--preset mvdream; prior mvdream/)
#   d  MVDream diffusers-style, SDS    (--preset mvdream-sds)
#   e  MVDream original .pt folder     (--preset mvdream; prior mvdream-original/: .pt + tokenizer/)
#
# Each setup's config is the preset's own (generate writes it to <out>/config.toml before
# loading anything: the script lets a first call fail on a missing prior to get it), with the
# overrides listed in the log, then `generate --config` runs under /usr/bin/time -v.
# Overrides: steps 2, no checkpoints; RewardSDS setups (b, c): 2 noise samples (min_max k 1)
# and one-step scoring instead of the preset's DDIM scoring (N 4 / 7, ~15 UNet passes per
# sample: hours per step on 2 cores); MVDream setups: no resolution milestone (the preset's
# switch to 256 px renders at step 5000 cannot lie inside 2 steps; the 8 views x 64 px renders
# of the first phase are kept). The priors' own resolutions are untouched: SD 2.1-base sees
# 512 px (64x64 latents), MVDream 256 px (32x32 latents, 4 views).
#
# Environment: REHEARSAL_DIR (default /tmp/rehearsal: weights in, runs/ and log.md out),
# EXTRA_OVERRIDES (space-separated key=JSON overrides added to every setup),
# SETUP_TIMEOUT seconds per setup (default 3600), PROMPT, SKIP_BUILD=1, GENERATE_BIN (a copy of
# the binary, so that a concurrent rebuild cannot swap it between setups).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
W=${REHEARSAL_DIR:-/tmp/rehearsal}
RUNS=$W/runs
LOG=$W/log.md
BIN=${GENERATE_BIN:-$REPO/target/release/rewardsds}
PROMPT=${PROMPT:-"a blue cone on top of an orange cylinder"}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-3600}
PY=python3
SETUPS=("$@")
[ ${#SETUPS[@]} -eq 0 ] && SETUPS=(a c b d e)

mkdir -p "$RUNS"
# Presets that name Hugging Face repos must never try the network here.
export HF_HUB_OFFLINE=1
cd "$REPO" || exit 1

if ! $PY -c 'import tomllib' 2>/dev/null; then
    PY=/tmp/ref/bin/python  # tomllib needs Python >= 3.11
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "== cargo build --release --bin rewardsds"
    if ! cargo build --release --bin rewardsds; then
        echo "build failed" >&2
        exit 1
    fi
fi

# Peak RSS and wall time: GNU time if there is one, else a /proc sampler.
if /usr/bin/time -v true >/dev/null 2>&1; then
    TIMER=gnu
else
    TIMER=proc
fi

if [ ! -f "$LOG" ]; then
    {
        echo "# Full-size CPU rehearsal (random weights, real layouts)"
        echo
        echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM; $(uname -sr)."
        echo "Binary: target/release/rewardsds (generate), git $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + uncommitted changes')."
        echo "Weights: $W (tools/rehearsal/make_random_weights.py). Timer: $TIMER."
        echo
        echo "| setup | command | load s | s per step | peak RSS GB | .glb |"
        echo "|---|---|---|---|---|---|"
    } >"$LOG"
fi
NOTES=$W/log_notes.md

# $1 dumped config.toml, then key=JSON overrides (dotted keys; null deletes) -> stdout.
edit_toml() {
    $PY - "$@" <<'PYEOF'
import json, sys, tomllib

path, *edits = sys.argv[1:]
with open(path, "rb") as f:
    config = tomllib.load(f)
for edit in edits:
    key, value = edit.split("=", 1)
    value = json.loads(value)
    *parents, last = key.split(".")
    table = config
    for p in parents:
        table = table.setdefault(p, {})
    if value is None:
        table.pop(last, None)
    else:
        table[last] = value

def bare(k):
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)

def fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{bare(k)} = {fmt(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))

def write(table, prefix):
    for k, v in table.items():
        if not isinstance(v, dict):
            print(f"{bare(k)} = {fmt(v)}")
    for k, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}.{bare(k)}" if prefix else bare(k)
            print(f"\n[{name}]")
            write(v, name)

write(config, "")
PYEOF
}

# The preset's full config (generate writes <out>/config.toml, then fails on the missing
# prior). $1 setup name, $2 preset -> prints the path, or fails.
dump_preset() {
    local dir=$RUNS/$1.preset
    rm -rf "$dir"
    "$BIN" generate --preset "$2" --prompt "$PROMPT" --prior "$RUNS/no-such-prior" \
        --backend cpu --out "$dir" >"$dir.log" 2>&1
    if [ -f "$dir/config.toml" ]; then
        echo "$dir/config.toml"
    else
        return 1
    fi
}

field() { # $1 regex with one group, $2 file
    sed -nE "s/$1/\1/p" "$2" | tail -1
}

# $1 setup, $2 label, $3 preset (fallback after a comma), then overrides.
run_setup() {
    local name=$1 label=$2 presets=$3
    shift 3
    local preset config dumped="" note=""
    for preset in ${presets//,/ }; do
        if dumped=$(dump_preset "$name" "$preset"); then
            break
        fi
        note="preset \`${presets%%,*}\` does not exist yet: $(tail -1 "$RUNS/$name.preset.log" | cut -c1-160); used \`$preset\`"
        dumped=""
    done
    if [ -z "$dumped" ]; then
        echo "| $label | (preset ${presets}) | - | - | - | no: could not get the preset's config: $(tail -1 "$RUNS/$name.preset.log" | cut -c1-200) |" >>"$LOG"
        return
    fi
    config=$RUNS/$name.toml
    # EXTRA_OVERRIDES: more key=JSON overrides for every setup (e.g. views_per_step=4).
    # shellcheck disable=SC2206
    local extra=(${EXTRA_OVERRIDES:-})
    set -- "$@" "${extra[@]}"
    if ! edit_toml "$dumped" "$@" >"$config"; then
        echo "| $label | (config edit failed) | - | - | - | no |" >>"$LOG"
        return
    fi
    local out=$RUNS/$name
    rm -rf "$out"
    local cmd=(timeout "$SETUP_TIMEOUT" "$BIN" generate --config "$config" --backend cpu --out "$out")
    echo "== setup $name: $label"
    echo "   preset $preset; overrides: $*"
    echo "   ${cmd[*]}"
    local start=$SECONDS rc
    if [ "$TIMER" = gnu ]; then
        /usr/bin/time -v -o "$out.time" "${cmd[@]}" >"$out.log" 2>&1
        rc=$?
    else
        "${cmd[@]}" >"$out.log" 2>&1 &
        local pid=$! peak=0 kb
        while kill -0 $pid 2>/dev/null; do
            for p in $pid $(pgrep -P $pid); do
                kb=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null)
                [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak=$kb
            done
            sleep 1
        done
        wait $pid
        rc=$?
        echo "Maximum resident set size (kbytes): $peak" >"$out.time"
    fi
    local wall=$((SECONDS - start))
    local load per_step rss glb glb_path extraction
    load=$(field '^loaded .* in ([0-9.]+)s.*' "$out.log")
    rss=$(field '.*Maximum resident set size \(kbytes\): ([0-9]+).*' "$out.time")
    rss=$(awk -v kb="${rss:-0}" 'BEGIN { printf "%.1f", kb / 1048576 }')
    per_step="-"
    if [ -f "$out/progress.json" ]; then
        per_step=$($PY - "$out/progress.json" <<'PYEOF'
import json, sys
steps = json.load(open(sys.argv[1]))
text = " / ".join(f"{p['seconds']:.0f}" for p in steps)
rewarded = [str(p["step"]) for p in steps if p["rewards"]]
print(text + (f" (step {', '.join(rewarded)} rewarded)" if rewarded else ""))
PYEOF
)
    fi
    glb_path=$(sed -nE 's/^wrote (.*\.glb) \(.*/\1/p' "$out.log" | tail -1)
    extraction=$(field '^wrote .*\.glb .*extraction ([0-9.]+)s\).*' "$out.log")
    if [ -n "$glb_path" ] && [ -f "$glb_path" ]; then
        glb="yes, $(stat -c %s "$glb_path") bytes (mesh extraction ${extraction}s)"
    else
        glb="no (exit $rc: $(grep -E 'Error|error|panicked' "$out.log" | head -1 | cut -c1-300 | tr '|' '/'))"
    fi
    local overrides="$*"
    overrides=${overrides//$W/\$W}
    echo "| $label | \`generate --config runs/$name.toml --backend cpu\`: preset $preset + ${overrides} | ${load:--} | $per_step | $rss | $glb; wall ${wall}s |" >>"$LOG"
    {
        echo "- $label: exit $rc, wall ${wall}s. Log: $out.log."
        [ -n "$note" ] && echo "  - $note"
        grep -E '^(loaded|wrote|done|warning)|WARN|panicked|Error' "$out.log" | head -8 | sed 's/^/  - /'
    } >>"$NOTES"
    tail -3 "$out.log"
}

SD=$W/sd21-base
IR=$W/image-reward
COMMON=(steps=2 checkpoint_every=0)
REWARD_LIGHT=(guidance.reward.n_samples=2 guidance.reward.strategy.k=1 'guidance.reward.scoring="one_step"')

for s in "${SETUPS[@]}"; do
    case $s in
        a) run_setup a "(a) SD 2.1-base, SDS" sd21-sds,quality-sds "${COMMON[@]}" \
               "prior=\"$SD\"" ;;
        b) run_setup b "(b) SD 2.1-base, RewardSDS + ImageReward" sd21,quality "${COMMON[@]}" \
               "prior=\"$SD\"" "reward=\"$IR\"" "${REWARD_LIGHT[@]}" ;;
        c) run_setup c "(c) MVDream (diffusers-style), RewardSDS + ImageReward" mvdream \
               "${COMMON[@]}" "prior=\"$W/mvdream\"" "reward=\"$IR\"" "${REWARD_LIGHT[@]}" \
               'resolution_milestones=[]' ;;
        d) run_setup d "(d) MVDream (diffusers-style), SDS" mvdream-sds "${COMMON[@]}" \
               "prior=\"$W/mvdream\"" 'resolution_milestones=[]' ;;
        e) run_setup e "(e) MVDream original .pt folder, RewardSDS + ImageReward" mvdream \
               "${COMMON[@]}" "prior=\"$W/mvdream-original\"" "reward=\"$IR\"" \
               "${REWARD_LIGHT[@]}" 'resolution_milestones=[]' ;;
        *) echo "unknown setup $s (a b c d e)" >&2 ;;
    esac
done
echo
cat "$LOG"
[ -f "$NOTES" ] && { echo; cat "$NOTES"; }
