# Sourced by scripts/test and .ci/run: `phase NAME` starts a timed phase (ending the one before);
# at exit, also after a failure, prints each phase's wall time and the total to stderr.
#   phase "build"; swift build ...; phase "tests: control plane"; ...
_phases_started=$SECONDS
_phase_name=""
_phase_start=0
_phase_lines=()
_phase_label=${PHASES_LABEL:-$(basename "$0")}

_phase_end() {
  if [ -n "$_phase_name" ]; then
    _phase_lines+=("$(printf '%6ds  %s' $((SECONDS - _phase_start)) "$_phase_name")")
  fi
  _phase_name=""
}

phase() {
  _phase_end
  _phase_name=$1
  _phase_start=$SECONDS
  echo "== $_phase_label: $1" >&2
}

_phases_report() {
  local status=$?
  _phase_end
  {
    echo "== $_phase_label: time per phase$([ "$status" -ne 0 ] && echo " (failed, exit $status)")"
    local line
    for line in "${_phase_lines[@]}"; do echo "$line"; done
    printf '%6ds  total\n' $((SECONDS - _phases_started))
  } >&2
}
trap _phases_report EXIT
