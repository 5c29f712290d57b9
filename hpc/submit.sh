#!/bin/bash
# Submit one array task per participant, then the group job once all of them have succeeded.
#
#   hpc/submit.sh BIDS_DIR OUTPUT_DIR [run.py options for the participant level...]
#
# Environment: CORDLESION_MAX_PARALLEL (default 50: at most that many tasks at once), SBATCH_EXTRA
# (options for both sbatch calls, e.g. "--account=abc --partition=cpu"), and those of
# cordlesion_array.sbatch (CORDLESION_SIF, ...), which sbatch passes on to the jobs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $# -lt 2 ]]; then
    echo "usage: $0 BIDS_DIR OUTPUT_DIR [run.py options...]" >&2
    exit 64
fi
bids_dir=$(realpath "$1")
out_dir=$(realpath -m "$2")
shift 2

n=$(bash "$here/cordlesion_array.sbatch" --list "$bids_dir" | wc -l)
if (( n == 0 )); then
    echo "cordlesion: no participants in $bids_dir (participants.tsv or sub-* folders)" >&2
    exit 66
fi
read -ra extra <<< "${SBATCH_EXTRA:-}"

# --parsable prints "jobid" or "jobid;cluster"; afterok on an array job waits for every task.
array_id=$(sbatch --parsable ${extra[@]+"${extra[@]}"} --array="1-$n%${CORDLESION_MAX_PARALLEL:-50}" \
    "$here/cordlesion_array.sbatch" "$bids_dir" "$out_dir" "$@")
array_id=${array_id%%;*}
group_id=$(sbatch --parsable ${extra[@]+"${extra[@]}"} --dependency="afterok:$array_id" \
    "$here/cordlesion_group.sbatch" "$bids_dir" "$out_dir")
group_id=${group_id%%;*}
echo "cordlesion: $n participant tasks in array job $array_id; group job $group_id runs after all succeed"
