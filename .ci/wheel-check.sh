#!/usr/bin/env bash
# The package on its own: build a wheel, install it (not editable) into a fresh virtual environment,
# and run every kind of command from an empty temporary directory, far from the source tree.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1

python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
wheel="$(ls "$work"/dist/latentcot-*.whl)"
# one top-level import name; the prompt templates and built-in models travel inside it
top_level="$(python3 -c 'import sys, zipfile; print(" ".join(sorted({n.split("/")[0] for n in zipfile.ZipFile(sys.argv[1]).namelist() if not n.split("/")[0].endswith(".dist-info")})))' "$wheel")"
[ "$top_level" = "latentcot" ] || { echo "wheel installs top-level names: $top_level (want: latentcot)"; exit 1; }

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet -c "$repo/constraints.txt" "$wheel"
bin="$work/venv/bin"
cd "$work" && mkdir scratch && cd scratch

if "$bin/python" -c "import analysis" 2>/dev/null; then echo "a top-level 'analysis' module is importable"; exit 1; fi
"$bin/python" -c "import latentcot.analysis, latentcot.prompts"
"$bin/latentcot" tasks >/dev/null
"$bin/latentcot" models | grep -q "builtin:addition-4x2r-cot"
# a built-in model on a generated task (its prompt template is package data), then the report
"$bin/latentcot" run --model builtin:addition-4x2r-cot --task addition:n=4,digits=2,reverse=1 --limit 8 \
    --gate entropy --threshold 0.5 --latent soft --out runs/gen
"$bin/latentcot" analyze runs/gen | tail -3
test -s runs/gen/report/report.html
# a dataset file (the generic template is package data too) and a sweep
printf '%s\n' '{"question": "12+30+7+1", "answer": "50"}' '{"question": "5+5+5+5", "answer": "20"}' > mine.jsonl
"$bin/latentcot" sweep --model builtin:addition-4x2r-cot --task mine.jsonl --thresholds 0.1,1 --latent soft \
    --max-new-tokens 24 --out runs/file
"$bin/latentcot" analyze runs/file >/dev/null
# training writes a model that the zoo lists and `run` loads
LATENTCOT_HOME="$work/home" "$bin/latentcot" train --task addition:n=2,digits=1 --method cot --arch gpt2 \
    --hidden 32 --layers 1 --heads 2 --steps 4 --eval-every 4 --eval-examples 4 --test-examples 4 --out models/tiny
"$bin/latentcot" run --model models/tiny --task addition:n=2,digits=1 --limit 4 --max-new-tokens 16 --out runs/tiny
echo "wheel check: ok ($(basename "$wheel"))"
