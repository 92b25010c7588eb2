# Sourced by the TA's entry scripts (hw2_1.sh, hw2_2.sh, hw2_3.sh, p4_gan/run.sh, p5_dann/run.sh)
# once they have set ROOT, the repository root: picks the interpreter, $PYTHON if set, else the
# repository's virtual environment, else python3 from PATH, and puts the root on PYTHONPATH so
# the problem packages import without an install.
if [ -n "${PYTHON:-}" ]; then
    # exec would fail with bash's own "No such file" and exit 127: say what is wrong, as the
    # Python side does, in one error line with exit status 2
    python_path="$(command -v -- "$PYTHON" 2>/dev/null)" || python_path=
    [ -f "$python_path" ] && [ -x "$python_path" ] || {
        echo "$(basename "$0"): error: PYTHON=$PYTHON is not an executable" >&2
        exit 2
    }
else
    PYTHON=python3
    [ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
    command -v "$PYTHON" >/dev/null 2>&1 || {
        echo "$(basename "$0"): error: no $ROOT/.venv and no python3 on PATH (set PYTHON=...)" >&2
        exit 2
    }
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
