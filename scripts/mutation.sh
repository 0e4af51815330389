#!/usr/bin/env bash
# Mutation testing (mutmut) of the science, analysis/, and of the stages' measurement code, against the
# tests that check their numbers ([tool.mutmut] in pyproject.toml). Not part of CI: a full run takes
# hours on 2 cores. docs/testing.md has the last run and how to read its survivors.
#
#   scripts/mutation.sh                 every mutant
#   scripts/mutation.sh --sample 3,7    the mutants whose number ends in 3 or 7 (a fixed 20% sample)
#   .venv/bin/mutmut show NAME          what a surviving mutant changed
set -euo pipefail
cd "$(dirname "$0")/.."

digits=""
if [[ "${1:-}" == --sample ]]; then
    digits="${2:?--sample needs digits, e.g. 3,7}"
    [[ "$digits" =~ ^[0-9](,[0-9])*$ ]] || { echo "mutation.sh: --sample takes digits such as 3,7" >&2; exit 2; }
fi

# The stages' measurement code; their settings, argv, checks and output transactions are plumbing,
# tested by tests/cli and tests/reliability, which this run does not select.
targets=(
    "mitosis_cli.analysis.*"
    "mitosis_cli.stages.clones.x__measure_network"
    "mitosis_cli.stages.clones.x__solves_and_shape"
    "mitosis_cli.stages.clones.x__head_readouts"
    "mitosis_cli.stages.clones.x__labelled_blocks"
    "mitosis_cli.stages.clones.x_measure_clones"
    "mitosis_cli.stages.clones.xǁ_Rowsǁadd"
    "mitosis_cli.stages.clone_summary.*"
    "mitosis_cli.stages.ensemble.x_measure_ensemble"
    "mitosis_cli.stages.ensemble.x_summarise_ensemble"
    "mitosis_cli.stages.ensemble.x__error_inf"
    "mitosis_cli.stages.ensemble.x__member_params"
    "mitosis_cli.stages.ensemble.x_gather_members"
    "mitosis_cli.stages.ensemble.xǁMemberSetǁpools"
)
patterns=()
for target in "${targets[@]}"; do
    if [[ -z "$digits" ]]; then
        patterns+=("${target}__mutmut_*")
    else
        for d in ${digits//,/ }; do patterns+=("${target}__mutmut_*${d}"); done
    fi
done

cores=$(nproc)  # before OMP_NUM_THREADS is set: nproc obeys it
# Mutants run in children forked from one process: one torch thread, so no OpenMP pool is inherited.
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 MITOSIS_THREADS=1
rm -rf mutants
start=$(date +%s)
.venv/bin/mutmut run --max-children "$cores" "${patterns[@]}" > mutants.log 2>&1 || true
echo "mutmut ran $(( $(date +%s) - start )) s, $cores mutants at a time ($(date -u +%FT%RZ)); log: mutants.log"
.venv/bin/mutmut results --all true > mutants-results.txt
.venv/bin/python scripts/mutation_summary.py mutants-results.txt "${patterns[@]}"
