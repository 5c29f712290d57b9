#!/bin/bash
# Check the dataset once, then submit one array task per participant and the group job after them.
#
#   hpc/submit.sh BIDS_DIR OUTPUT_DIR [run.py options for the participant level...]
#
# 1. On this (login) node: `run.py BIDS_DIR OUTPUT_DIR participant --dry-run [options]` through the same
#    image: BIDS validation (once for the whole dataset, unless --skip_bids_validator), options, models.
#    Nothing is submitted if it fails, nor when no node could ever run the jobs as requested (sbatch
#    --test-only; else they would pend forever).
# 2. The array: one task per participant (all of them, or those of --participant-label, which becomes
#    the array's task list: each task still gets its own participant). Tasks skip the validation.
# 3. The group job, --dependency=afterany: it runs when every task has ended, failed ones included, and
#    lists the failures (lesions.tsv rows with status "failed", participants without any output).
#
# Environment:
#   CORDLESION_ARRAY_SBATCH  sbatch options for the participant tasks only, e.g. "--cpus-per-task=2
#                            --mem=8G --time=01:00:00" (defaults: the #SBATCH lines of cordlesion_array.sbatch)
#   CORDLESION_GROUP_SBATCH  sbatch options for the group job only (defaults: cordlesion_group.sbatch)
#   SBATCH_EXTRA             sbatch options for both jobs, e.g. "--account=abc --partition=cpu"
#   CORDLESION_MAX_PARALLEL  at most that many tasks at once (default 50)
#   and those of cordlesion_array.sbatch (CORDLESION_SIF, ...), which sbatch passes on to the jobs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $# -lt 2 ]]; then
    echo "usage: $0 BIDS_DIR OUTPUT_DIR [run.py options...]" >&2
    exit 64
fi
bids_dir=$(realpath "$1")
out_dir=$(realpath -m "$2")
shift 2

# --participant-label L... (also =L, _label, abbreviations as argparse takes them): the task list.
opts=() wanted=() in_labels=0
for arg in "$@"; do
    opt=${arg%%=*}
    if [[ ${#opt} -ge 3 && ( "--participant-label" == "$opt"* || "--participant_label" == "$opt"* ) ]]; then
        in_labels=1
        [[ "$arg" != *=* ]] || wanted+=("${arg#*=}")
    elif (( in_labels )) && [[ "$arg" != -* ]]; then
        wanted+=("$arg")
    else
        in_labels=0
        opts+=("$arg")
    fi
done

mapfile -t participants < <(bash "$here/cordlesion_array.sbatch" --list "$bids_dir")
if (( ${#participants[@]} == 0 )); then
    echo "cordlesion: no participants in $bids_dir (participants.tsv or sub-* folders)" >&2
    exit 66
fi
tasks=() labels=()
for k in "${!participants[@]}"; do
    label=${participants[k]}
    if (( ${#wanted[@]} == 0 )) || printf '%s\n' "${wanted[@]#sub-}" | grep -qxF -- "$label"; then
        tasks+=("$((k + 1))")
        labels+=("$label")
    fi
done
for label in ${wanted[@]+"${wanted[@]#sub-}"}; do
    printf '%s\n' "${labels[@]}" | grep -qxF -- "$label" ||
        echo "cordlesion: --participant-label $label: no sub-$label in $bids_dir: skipped" >&2
done
if (( ${#tasks[@]} == 0 )); then
    echo "cordlesion: none of the participant labels is in $bids_dir (see: bash $here/cordlesion_array.sbatch" \
         "--list $bids_dir)" >&2
    exit 18
fi

selection=()
(( ${#wanted[@]} == 0 )) || selection=(--participant-label "${labels[@]}")
rc=0
plan=$(bash "$here/cordlesion_array.sbatch" --check "$bids_dir" "$out_dir" ${opts[@]+"${opts[@]}"} \
    ${selection[@]+"${selection[@]}"} 2>&1) || rc=$?
if (( rc != 0 )); then
    printf '%s\n' "$plan" >&2
    echo "cordlesion: the check of $bids_dir failed (exit $rc): nothing submitted" >&2
    exit "$rc"
fi
grep -E 'bids-validator-deno: | plan: ' <<< "$plan" || true  # the validation summary, the plan's size

read -ra extra <<< "${SBATCH_EXTRA:-}"
read -ra array_opts <<< "${CORDLESION_ARRAY_SBATCH:-}"
read -ra group_opts <<< "${CORDLESION_GROUP_SBATCH:-}"
spec=$(IFS=,; echo "${tasks[*]}")

# A request no node of the partition can meet (e.g. 4 CPUs on 2-CPU nodes) is accepted by sbatch and then
# pends forever (Reason=PartitionConfig): ask sbatch --test-only first, say which setting to change.
fits() {  # $1 = the variable that sets these resources, $2 = the job script, then its sbatch options
    local var=$1 script=$2 answer
    shift 2
    if ! answer=$(sbatch --test-only "$@" "$script" "$bids_dir" "$out_dir" 2>&1); then
        echo "cordlesion: no node can run $(basename "$script") as requested (sbatch --test-only: $answer):" \
             "set $var (e.g. \"--cpus-per-task=2 --mem=8G\") or SBATCH_EXTRA (--partition=...)" >&2
        exit 69
    fi
}
fits CORDLESION_ARRAY_SBATCH "$here/cordlesion_array.sbatch" ${extra[@]+"${extra[@]}"} \
    ${array_opts[@]+"${array_opts[@]}"} --array="$spec"
fits CORDLESION_GROUP_SBATCH "$here/cordlesion_group.sbatch" ${extra[@]+"${extra[@]}"} \
    ${group_opts[@]+"${group_opts[@]}"}
# --parsable prints "jobid" or "jobid;cluster".
array_id=$(sbatch --parsable ${extra[@]+"${extra[@]}"} ${array_opts[@]+"${array_opts[@]}"} \
    --array="$spec%${CORDLESION_MAX_PARALLEL:-50}" \
    "$here/cordlesion_array.sbatch" "$bids_dir" "$out_dir" ${opts[@]+"${opts[@]}"})
array_id=${array_id%%;*}
# afterany: the group level also runs when some participants failed (afterok would leave it pending
# forever); it is told which participants to expect, to name those that left no output at all.
group_id=$(CORDLESION_EXPECTED="${labels[*]}" sbatch --parsable ${extra[@]+"${extra[@]}"} \
    ${group_opts[@]+"${group_opts[@]}"} --dependency="afterany:$array_id" \
    "$here/cordlesion_group.sbatch" "$bids_dir" "$out_dir")
group_id=${group_id%%;*}
echo "cordlesion: ${#tasks[@]} participant tasks in array job $array_id; group job $group_id runs after" \
     "all of them have ended"
