# Sourced by the TA's entry scripts (hw2_1.sh, hw2_2.sh, hw2_3.sh, p4_gan/run.sh, p5_dann/run.sh)
# once they have set ROOT, the repository root: picks the interpreter, $PYTHON if set, else the
# repository's virtual environment, else python3 from PATH, and puts the root on PYTHONPATH so
# the problem packages import without an install.
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
