#!/bin/bash -eu
# ClusterFuzzLite's build step: the same build as OSS-Fuzz's.
exec "$SRC/vdpa-iova-planner/oss-fuzz/build.sh"
