# Sourced by the GPU scripts: install carried wheels (.whl/: open_clip_torch, ftfy, wcwidth, missing on
# the device image) to /tmp/site and put them and src/ on PYTHONPATH.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
