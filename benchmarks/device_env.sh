# Sourced by the GPU scripts: install carried wheels (.whl/, made by benchmarks/wheels.sh: open_clip_torch, ftfy,
# wcwidth, simplejpeg, missing on the device image) to /tmp/site and put them and src/ on PYTHONPATH.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('open_clip') and u.find_spec('simplejpeg')))" ||
  echo "device_env.sh: open_clip or simplejpeg is missing: run benchmarks/wheels.sh here and carry .whl" >&2
