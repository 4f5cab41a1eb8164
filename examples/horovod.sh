#!/usr/bin/env bash
# The quickstart model (examples/quickstart.py) trained data-parallel by 2 Horovod processes on
# this machine (gloo over 127.0.0.1); the Trainer is unchanged: candle detects horovodrun.
#
#   examples/horovod.sh                      # 2 processes, default parameters
#   examples/horovod.sh epochs=5 lr=0.01     # any Trainer parameter, as for `candle train`
#
# On a cluster, change the process count and hosts (one process per GPU; each rank is pinned to
# the GPU of its local rank), e.g. 8 GPUs on 2 nodes:
#   horovodrun -np 8 -H node1:4,node2:4 python -m candle train --trainer ... lr_scaling=linear
# The effective batch is batch_size x ranks; scale the learning rate explicitly with
# lr_scaling=linear or sqrt (logged at start), never silently.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOROVODRUN=${HOROVODRUN:-$(dirname "$PY")/horovodrun}
NP=${NP:-2}
exec "$HOROVODRUN" -np "$NP" -H "localhost:$NP" --gloo \
  "$PY" -m candle train --trainer examples/quickstart.py:BreastCancer \
  experiment=quickstart-horovod progress_bar=false "$@"
