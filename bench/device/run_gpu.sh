# The GPU checks of issue 3 as one prepared run on a lent device machine (see docs/speed.md):
# restore the trunks, install the official lpips from a carried wheel, then the
# side-by-side bench (float32 and bf16), the parity/precision/gradient tests at precision
# "highest", the memory figures and the half-precision error. Outputs under $OUT.
#
# Here, before the run (the tree that travels must stay under 64 MiB):
#   echo /.dev/ >> .git/info/exclude
#   python bench/device/pack_trunks.py pack
#   pip download --no-deps lpips==0.1.4 -d .dev/whl
#   mv weights/*_trunk.safetensors /tmp/   # and back after the run
# then run `bash bench/device/run_gpu.sh` with carry [".dev"], timeout ~560 s
# (measured on one H100: about 410 s).
export PYTHONUNBUFFERED=1
python3 bench/device/pack_trunks.py unpack || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .dev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi > "$OUT/env.txt" 2>&1
python3 -c "import jax, flax, torch, torchvision; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'torch', torch.__version__, torchvision.__version__, \
'cudnn', torch.backends.cudnn.version())" 2>&1 | tee -a "$OUT/env.txt"
echo "== bench"
timeout 280 python3 bench/bench_speed.py --device gpu --dtypes float32,bfloat16 --rounds 3 \
  --repeats 5 --min-time 0.1 --json "$OUT/results_gpu.json" 2>&1 | tee "$OUT/bench.txt"
echo "== tests (precision highest, set by tests/conftest.py)"
timeout 130 python3 -m pytest -q -p no:cacheprovider -m "not slow" -W default \
  tests/test_parity.py tests/test_precision.py tests/test_grad.py 2>&1 | tee "$OUT/tests.txt" | tail -15
echo "== memory"
timeout 70 python3 bench/memory.py 2>&1 | tee "$OUT/memory.txt"
echo "== precision"
timeout 50 python3 bench/precision.py --sizes 64,256 --seeds 100,101 2>&1 | tee "$OUT/precision.txt"
