#!/usr/bin/env bash
# Train tensor-train MiniLM students on SST-2 on the GPU machine (issue 18), several settings at
# once, and pack the best ones for the TVM runs (benchmarks/minilm_tt_tvm.py --student here,
# scripts/gpu_prepare_tt.py for sm_90).
#
#   LOWBIT_MINILM_DIR=... LOWBIT_DATA=... scripts/gpu_train_tt.sh OUTDIR "r bits e2e_lr emb_bits" ...
#
# 1. the fine-tuned teacher (benchmarks/minilm_tt_sst2.py --ranks "", cached in /tmp/tt/teacher.pt);
# 2. one benchmarks/minilm_tt_sst2.py process per setting, all at once (the GPU is far from busy
#    with one: a step is launch-bound), each with --save;
# 3. OUTDIR/results.json: every row with its command; the two best students by end-to-end dev
#    accuracy in OUTDIR/students.tar, split into 15 MB parts (students.tar.part-aa, ...) to fit
#    the transfer limit; OUTDIR/log-*: each process's log, written as it runs.
# Extra flags for every student run: $TT_FLAGS (default "--batch 64 --e2e-epochs 1"); for the
# teacher's: $TEACHER_FLAGS.
set -uo pipefail
out=$1; shift
work=/tmp/tt
mkdir -p "$out" "$work"
flags=${TT_FLAGS:---batch 64 --e2e-epochs 1}
# shellcheck disable=SC2086
python benchmarks/minilm_tt_sst2.py --ranks "" ${TEACHER_FLAGS:-} --teacher-cache $work/teacher.pt \
    --json $work/teacher.json >"$out/log-teacher" 2>&1 || { tail -20 "$out/log-teacher"; exit 1; }
for cfg in "$@"; do
    set -- $cfg
    tag="r$1-b$2-lr$3-e$4"
    # shellcheck disable=SC2086
    python benchmarks/minilm_tt_sst2.py --ranks "$1" --bits "$2" --e2e-lr "$3" \
        --embedding-bits "$4" $flags --teacher-cache $work/teacher.pt \
        --save "$work/$tag" --json "$work/$tag.json" >"$out/log-$tag" 2>&1 &
done
wait
python - "$work" "$out" <<'EOF'
import json, pathlib, shutil, subprocess, sys
work, out = map(pathlib.Path, sys.argv[1:])
runs = [json.loads(p.read_text()) for p in sorted(work.glob("r*.json"))]
(out / "results.json").write_text(json.dumps({"runs": runs}, indent=1))
rows = sorted(((r["rows"][0]["acc_e2e"], p) for p, r in zip(sorted(work.glob("r*.json")), runs)
               if r["rows"]), reverse=True)[:2]
keep = [str(p.with_suffix("").relative_to(work)) for _, p in rows]
print("packing", keep)
subprocess.run(["tar", "cf", str(work / "students.tar"), "-C", str(work), *keep], check=True)
subprocess.run(["split", "-b", "15M", str(work / "students.tar"),
                str(out / "students.tar.part-")], check=True)
EOF
ls -la "$out"
